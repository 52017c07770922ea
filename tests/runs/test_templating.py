"""Templating: values are data, never code, whatever they contain."""

import subprocess

import pytest

from runs.templating import RenderError, evaluate, render, render_shell, render_value, to_text

INJECTIONS = [
    "plain",
    "it's",
    'say "hi"',
    "$(touch {canary})",
    "`touch {canary}`",
    "a; touch {canary}",
    "a && touch {canary}",
    "a | touch {canary}",
    "line one\ntouch {canary}",
    "$HOME ${PATH} $((1+1))",
    "*",
    "-n",
    "--help",
    "a\\b\\",
    "'; touch {canary}; echo '",
    '"; touch {canary}; echo "',
    "日本語 ünïcødé 🚀",
    "tab\there",
    "  leading and trailing  ",
    "",
    "> {canary}",
    "<(touch {canary})",
    "!!",
    "#not a comment",
]


def run_shell(template: str, value: str) -> bytes:
    script, variables = render_shell(template, {"params": {"v": value}})
    result = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", script],
        capture_output=True,
        check=True,
        env={"PATH": "/usr/bin:/bin", **variables},
    )
    return result.stdout


# Each template prints the value between [ and ] in a different shell quoting context.
CONTEXTS = {
    "bare word": "printf '[%s]' {{ params.v }}",
    "inside double quotes": 'printf "[%s]" "{{ params.v }}"',
    "double quotes with text": 'echo "[{{ params.v }}]"',
    "inside single quotes": "echo '[{{ params.v }}]'",
    "ansi-c quotes": "echo $'[{{ params.v }}]'",
    "command substitution": 'echo "$(printf "[%s]" {{ params.v }})"',
    "backticks": "echo `printf '[%s]' {{ params.v }}`",
    "unquoted heredoc": "cat <<EOF\n[{{ params.v }}]\nEOF",
    "quoted heredoc": "cat <<'EOF'\n[{{ params.v }}]\nEOF",
    "indented heredoc": "cat <<-END\n\t[{{ params.v }}]\n\tEND",
    "after a comment line": "# {{ params.v }} in a comment\nprintf '[%s]' {{ params.v }}",
    "jinja loop": "{% for _ in [1] %}printf '[%s]' {{ params.v }}{% endfor %}",
    "filter and concatenation": "printf '[%s]' {{ ('' ~ params.v) | trim | lower | upper | lower }}",
}


@pytest.mark.parametrize("template", INJECTIONS)
@pytest.mark.parametrize("context", sorted(CONTEXTS))
def test_shell_value_is_literal_data_in_every_quoting_context(context, template, tmp_path):
    canary = tmp_path / "canary"
    value = template.replace("{canary}", str(canary))
    expected = value
    if context == "filter and concatenation":
        expected = value.strip().lower()
    if context in ("command substitution", "backticks", "after a comment line"):
        expected = expected.rstrip("\n")
    if context == "backticks":
        # Backticks word-split their output: that is the shell, not an injection.
        expected = None
    if context == "quoted heredoc" and "\n" in value:
        expected = value
    output = run_shell(CONTEXTS[context], value).decode()
    if expected is not None:
        body = output.removesuffix("\n")
        assert body == f"[{expected}]"
    assert not canary.exists()


def test_quoted_heredoc_refuses_a_value_that_would_end_it():
    with pytest.raises(RenderError, match="ends its heredoc"):
        render_shell("cat <<'EOF'\n{{ params.v }}\nEOF", {"params": {"v": "x\nEOF\ntouch /tmp/x"}})


def test_shell_value_with_nul_byte_loses_only_the_nul():
    assert run_shell("printf '%s' {{ params.v }}", "a\x00b") == b"ab"


def test_shell_values_travel_in_variables_not_in_the_script():
    script, variables = render_shell(
        'echo "checking {{ params.v }}" {{ params.v }}', {"params": {"v": "$(id)"}}
    )
    assert "$(id)" not in script
    assert script == 'echo "checking ${STEPWISE_V1}" "${STEPWISE_V2}"'
    assert variables == {"STEPWISE_V1": "$(id)", "STEPWISE_V2": "$(id)"}


def test_raw_blocks_are_left_alone():
    script, variables = render_shell("{% raw %}echo {{ x }}{% endraw %}", {"params": {}})
    assert script == "echo {{ x }}" and variables == {}


def test_url_values_are_percent_encoded():
    url = render(
        "https://api.example.com/services/{{ params.s }}?q={{ params.q }}",
        {"params": {"s": "../../admin?x=1#", "q": "a b&c=d"}},
        mode="url",
    )
    assert url == "https://api.example.com/services/..%2F..%2Fadmin%3Fx%3D1%23?q=a%20b%26c%3Dd"


def test_url_base_marked_safe_is_kept_as_written():
    url = render(
        "{{ params.base | safe }}/healthz", {"params": {"base": "http://h:8000"}}, mode="url"
    )
    assert url == "http://h:8000/healthz"


def test_json_single_expression_keeps_its_type():
    context = {"params": {"n": 3, "flag": True, "items": ["a"]}}
    rendered = render_value(
        {
            "n": "{{ params.n }}",
            "flag": "{{params.flag}}",
            "items": "{{ params.items }}",
            "s": "n={{ params.n }}",
        },
        context,
    )
    assert rendered == {"n": 3, "flag": True, "items": ["a"], "s": "n=3"}


def test_undefined_names_are_errors_not_empty_strings():
    with pytest.raises(RenderError, match="nope"):
        render("{{ params.nope }}", {"params": {}})
    with pytest.raises(RenderError, match="missing"):
        evaluate("steps.missing.status == 'succeeded'", {"steps": {}})


def test_sandbox_refuses_attribute_escapes():
    with pytest.raises(RenderError, match=r"SecurityError|unsafe"):
        render("{{ ''.__class__.__mro__[1].__subclasses__() }}", {})


def test_sandbox_is_immutable():
    with pytest.raises(RenderError):
        render("{{ params.items.append(1) }}", {"params": {"items": []}})


def test_text_forms_of_values():
    assert to_text(True) == "true"
    assert to_text(None) == ""
    assert to_text({"a": [1]}) == '{"a":[1]}'


def test_shift_inside_arithmetic_is_not_a_heredoc(tmp_path):
    canary = tmp_path / "canary"
    output = run_shell("echo $((1<<2))\nprintf '[%s]' {{ params.v }}", f"-rf {canary} *")
    assert output.decode() == f"4\n[-rf {canary} *]"


def test_numbers_may_go_inside_arithmetic_but_nothing_else():
    script, variables = render_shell("echo $(( {{ params.v }} * 2 ))", {"params": {"v": 21}})
    assert script == "echo $(( 21 * 2 ))" and variables == {}
    with pytest.raises(RenderError, match="only a number"):
        render_shell("echo $(( {{ params.v }} ))", {"params": {"v": "a[$(touch x)]"}})


# Where bash evaluates a value as arithmetic, `a[$(cmd)]` runs cmd even from a variable.
ARITHMETIC_CONTEXTS = {
    "[[ -gt ]]": "[[ {{ params.v }} -gt 0 ]] && echo '[positive]' || true",
    "[[ -eq ]] quoted": '[[ "{{ params.v }}" -eq 0 ]] || echo "[$?]"',
    "[[ -lt ]] right operand": "[[ 0 -lt x+{{ params.v }} ]] || true",
    "[[ -v ]]": "[[ -v {{ params.v }} ]] || true",
    "array subscript": 'a=(x y); echo "[${a[{{ params.v }}]}]"',
    "array subscript unquoted": "a=(x y); echo [${a[{{ params.v }}]}]",
    "substring offset": 's=hello; echo "[${s:{{ params.v }}}]"',
    "substring length": 's=hello; echo "[${s:0:{{ params.v }}}]"',
    "$[ ]": "echo [$[ {{ params.v }} ]]",
    "let": 'let "n = {{ params.v }}"; echo "[$n]"',
    "$(( )) in double quotes": 'echo "[$(( {{ params.v }} + 1 ))]"',
    "$(( )) in a heredoc": "cat <<EOF\n[$(( {{ params.v }} ))]\nEOF",
    "subscript in a heredoc": "a=(x y)\ncat <<EOF\n[${a[{{ params.v }}]}]\nEOF",
    "array element assignment": 'a[{{ params.v }}]=y; echo "[${a[@]}]"',
    "array element assignment after declare": 'declare a[{{ params.v }}]=y; echo "[${a[@]}]"',
    "declare -i": 'declare -i n={{ params.v }}; echo "[$n]"',
    "integer assigned later": 'local -i n 2>/dev/null || declare -i n; n="{{ params.v }}"; echo "[$n]"',
    "integer appended to": 'declare -gi n=1; n+={{ params.v }}; echo "[$n]"',
}


@pytest.mark.parametrize("context", sorted(ARITHMETIC_CONTEXTS))
def test_only_numbers_go_where_bash_evaluates_arithmetic(context, tmp_path):
    canary = tmp_path / "canary"
    template = ARITHMETIC_CONTEXTS[context]
    with pytest.raises(RenderError, match="only a number"):
        run_shell(template, f"a[$(touch {canary})]")
    assert not canary.exists()
    run_shell(template, "1")  # a number is written in as it is, and works


def test_strings_stay_allowed_where_bash_does_not_evaluate_arithmetic(tmp_path):
    canary = tmp_path / "canary"
    value = f"a[$(touch {canary})]"
    templates = [
        '[[ {{ params.v }} == "$V" && 1 -lt 2 ]] && echo "[{{ params.v }}]"',
        'declare -A m=([k]=1); echo "[${m[{{ params.v }}]}]"',
        'echo "${UNSET:-[{{ params.v }}]}"',
        "echo ${UNSET:-[{{ params.v }}]}",
        'declare -A m; m[{{ params.v }}]=1; echo "[${!m[@]}]"',
        'n={{ params.v }}; echo "[$n]"',
        'declare -i count=1; name="{{ params.v }}"; echo "[$name]"',
    ]
    outputs = []
    for template in templates:
        script, variables = render_shell(template, {"params": {"v": value}})
        result = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", script],
            capture_output=True,
            check=True,
            env={"PATH": "/usr/bin:/bin", "V": value, **variables},
        )
        outputs.append(result.stdout.decode())
    assert outputs == [f"[{value}]\n", "[]\n", *[f"[{value}]\n"] * 5]
    assert not canary.exists()


@pytest.mark.parametrize(
    "template",
    ["{{ 'a' * 10**9 }}", "{{ [0] * 10**9 }}", "{{ 10 * 'a' * 10**9 }}", "{{ 7 ** 100000000 }}"],
)
def test_templates_cannot_make_huge_values(template):
    # These would take a worker's memory, or its interpreter for hours (no timeout can stop
    # a single big-number operation); range() is already bounded by Jinja's sandbox.
    with pytest.raises(RenderError, match="SecurityError"):
        render(template, {})
    with pytest.raises(RenderError, match="SecurityError"):
        evaluate(template.strip("{} "), {})


def test_ordinary_repetition_and_powers_still_work():
    assert render("{{ '-' * 3 }}{{ [1] * 2 }}{{ 2 ** 10 }}{{ 2 ** -1 }}", {}) == "---[1,1]10240.5"
