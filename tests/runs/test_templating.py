"""Templating: values are data, never code, whatever they contain."""

import subprocess

import pytest

from runs.templating import RenderError, evaluate, render, render_value, to_text

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


@pytest.mark.parametrize("template", INJECTIONS)
def test_shell_value_is_one_literal_word(template, tmp_path):
    canary = tmp_path / "canary"
    value = template.replace("{canary}", str(canary))
    script = render('printf "%s" {{ params.v }}', {"params": {"v": value}}, mode="shell")
    result = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", script], capture_output=True, check=True
    )
    assert result.stdout.decode() == value
    assert not canary.exists()


def test_shell_value_with_nul_byte_loses_only_the_nul(tmp_path):
    script = render("printf '%s' {{ params.v }}", {"params": {"v": "a\x00b"}}, mode="shell")
    result = subprocess.run(["bash", "-c", script], capture_output=True, check=True)
    assert result.stdout == b"ab"


def test_shell_quoting_applies_to_every_expression_including_filters_and_concatenation(tmp_path):
    canary = tmp_path / "canary"
    context = {"params": {"v": f"x; touch {canary}"}}
    script = render(
        "printf '%s|' {{ params.v | upper }} {{ 'pre-' ~ params.v }} {{ params.v | safe }}",
        context,
        mode="shell",
    )
    subprocess.run(["bash", "-c", script], capture_output=True, check=True)
    assert not canary.exists()


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
