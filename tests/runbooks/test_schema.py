"""The runbook definition schema: what is accepted, and where each problem is reported."""

import json
import textwrap
from typing import Any

import pytest
from pydantic import ValidationError

from runbooks.durations import MAX_DURATION_SECONDS
from runbooks.schema import (
    DefinitionError,
    DefinitionIssue,
    GroupStep,
    HttpStep,
    Retries,
    RunbookDefinition,
    ShellStep,
    SleepStep,
    load_definition_text,
    parse_definition,
)

# DESIGN.md's example, with its approval step (a later kind) replaced by a shell step.
DESIGN_EXAMPLE = """
slug: restart-service            # ^[a-z0-9][a-z0-9-]{0,62}$, unique
name: Restart a service
description: |                   # markdown, shown on the runbook page
  Rolling restart with a health check before and after.
labels: {team: sre}
timeout: 30m                     # whole run; durations: 500ms, 10s, 5m, 2h, or integer seconds
params:
  - name: service                # ^[a-z_][a-z0-9_]*$
    label: Service
    type: choice                 # string | text | integer | number | boolean | choice
                                 # | multichoice | date | datetime | json | secret
    choices: [api, web, worker]
    default: api
  - name: replicas
    type: integer
    min: 1
    max: 20
    default: 2
  - name: ticket
    type: string
    pattern: '^OPS-[0-9]+$'
    required: false              # required defaults to true unless a default is given
outputs:                         # run outputs, rendered when the run succeeds
  restarted: "{{ steps.restart.outputs.count }}"
steps:
  - id: check                    # ^[a-z_][a-z0-9_-]*$, unique in the runbook
    name: Health check before
    shell: |
      echo "checking {{ params.service }}"
      echo "healthy=yes" >> "$STEPWISE_OUTPUT"
    timeout: 30s
    retries: {max: 2, delay: 2s, backoff: 2}
  - id: gate
    shell: echo "would ask for approval to restart {{ params.service }}"
  - id: restart
    parallel: true               # a group; without it children run in order
    steps:
      - id: restart_a
        shell: ./restart.sh a
      - id: restart_b
        http:
          method: POST
          url: "https://deploy.internal/services/{{ params.service }}/restart"
          headers: {Authorization: "Bearer {{ params.deploy_token }}"}
          json: {replicas: "{{ params.replicas }}"}
          expect: [200, 202]
          timeout: 10s
  - id: settle
    sleep: 5s
  - id: report
    if: "steps.restart.status == 'succeeded'"
    continue_on_error: true
    shell: echo done
"""


def definition(*steps: dict[str, Any], **top: Any) -> dict[str, Any]:
    """A minimal valid definition, with the given steps and top-level keys."""
    return {"slug": "demo", "name": "Demo", "steps": list(steps) or [shell_step()], **top}


def shell_step(step_id: str = "hello", **keys: Any) -> dict[str, Any]:
    return {"id": step_id, "shell": "echo hello", **keys}


def issues(data: object) -> list[tuple[str, str]]:
    with pytest.raises(DefinitionError) as caught:
        parse_definition(data)
    return [(issue.path, issue.message) for issue in caught.value.errors]


def only_issue(data: object) -> tuple[str, str]:
    found = issues(data)
    assert len(found) == 1, found
    return found[0]


# --- Accepted definitions -------------------------------------------------------------------


def test_design_example_is_accepted_and_numbered_like_an_outline() -> None:
    parsed = load_definition_text(DESIGN_EXAMPLE)

    outline = [(n.number, n.step.id, n.parent, n.depth) for n in parsed.iter_steps()]
    assert outline == [
        ("1", "check", None, 0),
        ("2", "gate", None, 0),
        ("3", "restart", None, 0),
        ("3.1", "restart_a", "3", 1),
        ("3.2", "restart_b", "3", 1),
        ("4", "settle", None, 0),
        ("5", "report", None, 0),
    ]
    assert [n.step.kind for n in parsed.iter_steps()] == [
        "shell",
        "shell",
        "group",
        "shell",
        "http",
        "sleep",
        "shell",
    ]


def test_design_example_values_are_normalised() -> None:
    parsed = load_definition_text(DESIGN_EXAMPLE)
    check, _gate, restart, settle, report = parsed.steps

    assert parsed.timeout == 1800.0
    assert parsed.labels == {"team": "sre"}
    assert [p.name for p in parsed.params] == ["service", "replicas", "ticket"]
    assert [p.required for p in parsed.params] == [False, False, False]
    assert isinstance(check, ShellStep)
    assert check.display_name == "Health check before"
    assert check.timeout == 30.0
    assert check.retries is not None
    assert (check.retries.max, check.retries.delay, check.retries.backoff) == (2, 2.0, 2.0)
    assert check.max_attempts == 3
    assert isinstance(restart, GroupStep)
    assert restart.parallel is True
    assert restart.display_name == "restart"
    http_step = restart.steps[1]
    assert isinstance(http_step, HttpStep)
    assert http_step.http.method == "POST"
    assert http_step.http.json_ == {"replicas": "{{ params.replicas }}"}
    assert http_step.http.expect == [200, 202]
    assert http_step.http.timeout == 10.0
    assert http_step.max_attempts == 1
    assert isinstance(settle, SleepStep)
    assert settle.sleep == 5.0
    assert report.if_ == "steps.restart.status == 'succeeded'"
    assert report.continue_on_error is True


def test_canonical_form_round_trips_unchanged() -> None:
    parsed = load_definition_text(DESIGN_EXAMPLE)
    canonical = parsed.canonical()

    assert parse_definition(canonical) == parsed
    assert parse_definition(canonical).canonical() == canonical
    assert json.loads(json.dumps(canonical)) == canonical


def test_canonical_form_leaves_out_defaults_and_uses_the_written_key_names() -> None:
    canonical = parse_definition(
        definition(
            {"id": "call", "http": {"url": "https://x", "json": {"a": 1}}, "if": "true"},
        )
    ).canonical()
    assert canonical == {
        "slug": "demo",
        "name": "Demo",
        "steps": [{"id": "call", "if": "true", "http": {"url": "https://x", "json": {"a": 1}}}],
    }


def test_equivalent_spellings_have_the_same_canonical_form() -> None:
    a = definition({"id": "call", "http": {"method": "post", "url": "u", "timeout": "30s"}})
    b = definition({"id": "call", "http": {"method": "POST", "url": "u", "timeout": 30}})
    assert parse_definition(a).canonical() == parse_definition(b).canonical()


def test_json_text_is_accepted() -> None:
    parsed = load_definition_text(json.dumps(definition()))
    assert parsed.slug == "demo"


def test_yaml_flow_style_starting_with_a_brace_is_accepted() -> None:
    parsed = load_definition_text("{slug: demo, name: Demo, steps: [{id: a, sleep: 1s}]}")
    assert parsed.steps[0].kind == "sleep"


def test_http_method_is_case_insensitive_and_defaults_to_get() -> None:
    parsed = parse_definition(
        definition(
            {"id": "a", "http": {"url": "u", "method": "delete"}},
            {"id": "b", "http": {"url": "u"}},
        )
    )
    assert [step.http.method for step in parsed.steps] == ["DELETE", "GET"]


def test_http_expect_defaults_to_any_2xx() -> None:
    spec = parse_definition(definition({"id": "a", "http": {"url": "u"}})).steps[0].http
    assert spec.expect is None
    assert spec.accepts(204)
    assert not spec.accepts(302)
    assert spec.timeout == 30.0
    assert spec.follow_redirects is False


def test_retries_as_an_integer_means_max_retries_without_delay() -> None:
    step = parse_definition(definition(shell_step(retries=3))).steps[0]
    assert step.retries is not None
    assert (step.retries.max, step.retries.delay, step.retries.backoff) == (3, 0.0, 1.0)
    assert step.max_attempts == 4


def test_retry_delay_grows_by_the_backoff() -> None:
    step = parse_definition(
        definition(shell_step(retries={"max": 3, "delay": "2s", "backoff": 3}))
    ).steps[0]
    assert [step.retries.delay_before(attempt) for attempt in (2, 3, 4)] == [2.0, 6.0, 18.0]


def test_retry_delay_stops_growing_at_the_duration_limit() -> None:
    # The largest a definition may say: each bound on its own is sane, their product is not.
    step = parse_definition(
        definition(shell_step(retries={"max": 100, "delay": "8784h", "backoff": 10}))
    ).steps[0]
    assert step.retries.delay_before(101) == MAX_DURATION_SECONDS


def test_retry_delay_of_values_past_the_bounds_is_the_limit_not_an_overflow() -> None:
    # As a version saved before the bounds, or a run that counted attempts past them, has.
    retries = Retries.model_construct(max=10**20, delay=1e20, backoff=1e300)
    assert retries.delay_before(3) == MAX_DURATION_SECONDS
    assert retries.delay_before(2**40) == MAX_DURATION_SECONDS
    no_delay = Retries.model_construct(max=10**20, delay=0.0, backoff=1e300)
    assert no_delay.delay_before(2**40) == 0


def test_steps_without_retries_have_one_attempt() -> None:
    parsed = parse_definition(definition({"id": "s", "sleep": 1}, shell_step()))
    assert [step.max_attempts for step in parsed.steps] == [1, 1]


def test_if_false_from_yaml_becomes_an_expression() -> None:
    step = parse_definition(definition(shell_step(**{"if": False}))).steps[0]
    assert step.if_ == "false"


def test_unknown_filters_in_if_are_left_to_the_renderer() -> None:
    step = parse_definition(definition(shell_step(**{"if": "params.x | custom_filter"}))).steps[0]
    assert step.if_ == "params.x | custom_filter"


def test_deeply_nested_groups_are_numbered_by_position() -> None:
    parsed = parse_definition(
        definition(
            shell_step("a"),
            {
                "id": "outer",
                "steps": [
                    shell_step("b"),
                    {"id": "inner", "steps": [shell_step("c"), shell_step("d")]},
                ],
            },
        )
    )
    assert [(n.number, n.step.id, n.depth) for n in parsed.iter_steps()] == [
        ("1", "a", 0),
        ("2", "outer", 0),
        ("2.1", "b", 1),
        ("2.2", "inner", 1),
        ("2.2.1", "c", 2),
        ("2.2.2", "d", 2),
    ]


# --- Rejections, each at its path -----------------------------------------------------------


def test_unknown_key_at_top_level_is_reported_with_its_path() -> None:
    assert only_issue(definition(owner="sre")) == ("owner", "unknown key")


def test_unknown_key_in_a_step_is_reported_with_its_path() -> None:
    assert only_issue(definition(shell_step(colour="red"))) == ("steps[0].colour", "unknown key")


def test_unknown_key_in_http_step_is_reported_with_its_path() -> None:
    data = definition(shell_step("a"), {"id": "b", "http": {"url": "u", "verb": "GET"}})
    assert only_issue(data) == ("steps[1].http.verb", "unknown key")


def test_unknown_key_in_a_nested_step_is_reported_with_its_path() -> None:
    data = definition({"id": "g", "steps": [shell_step("a"), shell_step("b", sleepy=True)]})
    assert only_issue(data) == ("steps[0].steps[1].sleepy", "unknown key")


def test_env_on_an_http_step_is_an_unknown_key_that_says_where_it_belongs() -> None:
    data = definition({"id": "a", "http": {"url": "u"}, "env": {"A": "b"}})
    assert only_issue(data) == ("steps[0].env", "unknown key (env is allowed only on shell steps)")


def test_timeout_on_a_group_and_timeout_and_retries_on_a_sleep_are_accepted() -> None:
    parsed = parse_definition(
        definition(
            {"id": "g", "timeout": "5m", "steps": [shell_step()]},
            {"id": "s", "sleep": "10s", "timeout": "2s", "retries": {"max": 1, "delay": "1s"}},
        )
    )
    group, nap = parsed.steps
    assert group.timeout == 300
    assert (nap.timeout, nap.max_attempts) == (2, 2)


def test_timeout_on_an_approval_step_is_its_approval_timeout() -> None:
    gate = {"id": "gate", "approval": {"message": "Go?", "approvers": {"users": ["ann"]}}}
    parsed = parse_definition(definition({**gate, "timeout": "30m"}))
    assert parsed.steps[0].approval.timeout == 1800
    both = {**gate, "timeout": "30m", "approval": {**gate["approval"], "timeout": "1h"}}
    assert only_issue(definition(both)) == (
        "steps[0].timeout",
        "give the timeout here or in approval, not both",
    )


def test_retries_on_a_group_is_an_unknown_key_that_says_where_it_belongs() -> None:
    data = definition({"id": "g", "retries": 2, "steps": [shell_step()]})
    assert only_issue(data) == (
        "steps[0].retries",
        "unknown key (retries is allowed only on shell, http and sleep steps)",
    )


def test_missing_step_id_is_required() -> None:
    assert only_issue(definition({"shell": "echo"})) == ("steps[0].id", "required")


def test_missing_name_and_steps_are_required() -> None:
    assert issues({"slug": "demo"}) == [("name", "required"), ("steps", "required")]


def test_empty_steps_are_rejected() -> None:
    assert only_issue(definition(steps=[])) == ("steps", "must not be empty")


def test_empty_group_is_rejected() -> None:
    assert only_issue(definition({"id": "g", "steps": []})) == (
        "steps[0].steps",
        "must not be empty",
    )


@pytest.mark.parametrize("step_id", ["Check", "1st", "has space", "dot.ted", ""])
def test_step_id_must_match_the_id_pattern(step_id: str) -> None:
    path, message = only_issue(definition(shell_step(step_id)))
    assert path == "steps[0].id"
    assert message.startswith("must start with a lowercase letter or underscore")


@pytest.mark.parametrize("slug", ["Restart", "-restart", "restart_service", "a" * 64, ""])
def test_slug_must_match_the_slug_pattern(slug: str) -> None:
    path, message = only_issue(definition(slug=slug))
    assert path == "slug"
    assert "lowercase letters, digits and dashes" in message


def test_blank_name_is_rejected() -> None:
    assert only_issue(definition(name="  ")) == ("name", "must not be empty")


def test_step_without_a_kind_names_the_allowed_kinds() -> None:
    data = definition(shell_step("a"), {"id": "b", "name": "no kind"})
    assert only_issue(data) == (
        "steps[1]",
        "a step needs exactly one of shell, http, sleep, approval, steps",
    )


def test_step_of_an_unknown_kind_names_the_allowed_kinds() -> None:
    data = definition({"id": "gate", "notify": {"message": "ok?"}})
    assert only_issue(data) == (
        "steps[0]",
        "a step needs exactly one of shell, http, sleep, approval, steps",
    )


def test_approval_step_needs_approvers_and_rejects_unknown_keys() -> None:
    data = definition({"id": "gate", "approval": {"message": "ok?", "approvers": {}, "quorum": 2}})
    assert set(issues(data)) == {
        ("steps[0].approval.approvers", "name at least one user or group"),
        ("steps[0].approval.quorum", "unknown key"),
    }


def test_approvals_required_is_at_most_100() -> None:
    def gate(required: object) -> dict[str, Any]:
        spec = {"message": "Go?", "approvers": {"groups": ["sre"]}, "required": required}
        return definition({"id": "gate", "approval": spec})

    assert parse_definition(gate(100)).steps[0].approval.required == 100
    assert only_issue(gate(99999999999999999999)) == (
        "steps[0].approval.required",
        "must be at most 100",
    )
    assert parse_definition(gate(10**20), stored=True).steps[0].approval.required == 100


def test_approval_fields_keep_required_in_the_canonical_form() -> None:
    data = definition(
        {
            "id": "gate",
            "approval": {
                "message": "Restart?",
                "approvers": {"groups": ["sre-leads"]},
                "fields": [
                    {"name": "window", "type": "string", "default": "now", "required": True}
                ],
            },
        }
    )
    again = parse_definition(parse_definition(data).canonical())
    assert again.steps[0].approval.fields[0].required is True


def test_step_with_two_kinds_is_rejected_naming_both() -> None:
    data = definition({"id": "a", "shell": "echo", "http": {"url": "u"}})
    path, message = only_issue(data)
    assert path == "steps[0]"
    assert message.startswith("a step needs exactly one of shell, http, sleep, approval, steps")
    assert "shell and http" in message


def test_step_that_is_not_a_mapping_is_rejected() -> None:
    path, message = only_issue(definition("echo hello"))
    assert path == "steps[0]"
    assert message.startswith("must be a mapping")


def test_duplicate_step_id_in_a_nested_group_is_reported_at_the_second_one() -> None:
    data = definition(
        shell_step("check"),
        {"id": "group", "steps": [shell_step("other"), shell_step("check")]},
    )
    assert only_issue(data) == (
        "steps[1].steps[1].id",
        "duplicate step id 'check' (first used at steps[0])",
    )


def test_duplicate_of_a_nested_step_reports_the_nested_path() -> None:
    data = definition({"id": "group", "steps": [shell_step("a")]}, shell_step("a"))
    assert only_issue(data) == (
        "steps[1].id",
        "duplicate step id 'a' (first used at steps[0].steps[0])",
    )


def test_duplicate_param_names_are_reported_at_the_second_one() -> None:
    data = definition(params=[{"name": "service"}, {"name": "other"}, {"name": "service"}])
    assert only_issue(data) == (
        "params[2].name",
        "duplicate param name 'service' (first used at params[0])",
    )


def test_duplicates_are_caught_by_model_validate_too() -> None:
    with pytest.raises(ValidationError, match="duplicate step id 'a'"):
        RunbookDefinition.model_validate(definition(shell_step("a"), shell_step("a")))


@pytest.mark.parametrize(
    ("keys", "path"),
    [
        ({"timeout": "soon"}, "steps[0].timeout"),
        ({"timeout": "5 minutes"}, "steps[0].timeout"),
        ({"timeout": -5}, "steps[0].timeout"),
        ({"retries": {"max": 1, "delay": "later"}}, "steps[0].retries.delay"),
    ],
)
def test_bad_duration_is_reported_with_the_accepted_forms(keys: dict[str, Any], path: str) -> None:
    found_path, message = only_issue(definition(shell_step(**keys)))
    assert found_path == path
    assert message.startswith("invalid duration")


def test_bad_duration_on_sleep_and_top_level_is_reported() -> None:
    data = definition({"id": "s", "sleep": "a while"}, timeout=True)
    assert [path for path, _ in issues(data)] == ["timeout", "steps[0].sleep"]


TOO_LONG = "a duration can be at most 366 days (8784h)"


@pytest.mark.parametrize(
    ("data", "path"),
    [
        (definition(timeout=99999999999999999999), "timeout"),
        (definition(timeout="8785h"), "timeout"),
        (definition(shell_step(timeout=MAX_DURATION_SECONDS + 1)), "steps[0].timeout"),
        (definition({"id": "s", "sleep": 1e20}), "steps[0].sleep"),
        (
            definition({"id": "a", "http": {"url": "u", "timeout": "9" * 400}}),
            "steps[0].http.timeout",
        ),
        (
            definition(
                {
                    "id": "a",
                    "approval": {
                        "message": "Go?",
                        "approvers": {"users": ["ann"]},
                        "timeout": 10**400,
                    },
                }
            ),
            "steps[0].approval.timeout",
        ),
        (
            definition({"id": "g", "timeout": float("inf"), "steps": [shell_step()]}),
            "steps[0].timeout",
        ),
        (definition(shell_step(retries={"max": 1, "delay": "9000h"})), "steps[0].retries.delay"),
    ],
)
def test_duration_over_the_limit_is_refused_at_its_path(data: dict[str, Any], path: str) -> None:
    found_path, message = only_issue(data)
    assert found_path == path
    assert message.startswith("invalid duration") and message.endswith(TOO_LONG)


def test_durations_at_the_limit_are_accepted() -> None:
    parsed = parse_definition(
        definition(
            shell_step(timeout="8784h", retries={"max": 1, "delay": MAX_DURATION_SECONDS}),
            {"id": "s", "sleep": "8784h"},
            timeout=MAX_DURATION_SECONDS,
        )
    )
    assert parsed.timeout == parsed.steps[0].timeout == parsed.steps[1].sleep == 31_622_400


def test_bad_http_timeout_is_reported_inside_http() -> None:
    path, message = only_issue(definition({"id": "a", "http": {"url": "u", "timeout": "x"}}))
    assert path == "steps[0].http.timeout"
    assert "500ms, 10s, 5m, 2h" in message


@pytest.mark.parametrize(
    ("retries", "path", "message"),
    [
        (-1, "steps[0].retries", "must be at least 0"),
        (
            True,
            "steps[0].retries",
            "must be a number of retries or a mapping with max, delay and backoff",
        ),
        ("3", "steps[0].retries", "must be a mapping"),
        ({"max": -1}, "steps[0].retries.max", "must be at least 0"),
        ({"max": "2"}, "steps[0].retries.max", "must be a whole number"),
        ({"delay": "1s"}, "steps[0].retries.max", "required"),
        ({"max": 2, "backoff": 0.5}, "steps[0].retries.backoff", "must be at least 1"),
        (101, "steps[0].retries", "must be at most 100"),
        (99999999999999999999, "steps[0].retries", "must be at most 100"),
        ({"max": 101}, "steps[0].retries.max", "must be at most 100"),
        (
            {"max": 2, "delay": "1s", "backoff": 1e300},
            "steps[0].retries.backoff",
            "must be at most 10",
        ),
        ({"max": 2, "jitter": 1}, "steps[0].retries.jitter", "unknown key"),
    ],
)
def test_bad_retries_are_reported_at_the_offending_key(
    retries: object, path: str, message: str
) -> None:
    assert only_issue(definition(shell_step(retries=retries))) == (path, message)


def test_retries_at_their_bounds_are_accepted() -> None:
    short, mapping = parse_definition(
        definition(
            shell_step("a", retries=100), shell_step("b", retries={"max": 100, "backoff": 10})
        )
    ).steps
    assert (short.max_attempts, mapping.max_attempts, mapping.retries.backoff) == (101, 101, 10)


def test_a_saved_version_over_the_bounds_loads_with_its_numbers_clamped() -> None:
    # Versions saved before the bounds existed must still show and run.
    saved = definition(
        shell_step(timeout=1e20, retries={"max": 10**20, "delay": 1e20, "backoff": 1e300}),
        {"id": "s", "sleep": 1e20},
        timeout=1e20,
    )
    with pytest.raises(DefinitionError):
        parse_definition(saved)

    parsed = parse_definition(saved, stored=True)
    shell, sleep = parsed.steps
    assert parsed.timeout == shell.timeout == sleep.sleep == MAX_DURATION_SECONDS
    assert (shell.retries.max, shell.retries.delay, shell.retries.backoff) == (
        100,
        MAX_DURATION_SECONDS,
        10,
    )


@pytest.mark.parametrize(
    ("http", "path", "message"),
    [
        ({}, "steps[0].http.url", "required"),
        ({"url": ""}, "steps[0].http.url", "must not be empty"),
        ({"url": "u", "method": "FETCH"}, "steps[0].http.method", "must be one of 'GET', "),
        ({"url": "u", "json": {}, "body": "x"}, "steps[0].http.body", "cannot be used together"),
        ({"url": "u", "expect": []}, "steps[0].http.expect", "must not be empty"),
        ({"url": "u", "expect": [200, 999]}, "steps[0].http.expect[1]", "must be at most 599"),
        ({"url": "u", "headers": {"X": 1}}, "steps[0].http.headers.X", "must be a string"),
        (
            {"url": "u", "follow_redirects": "yes"},
            "steps[0].http.follow_redirects",
            "must be true or false",
        ),
        ("https://x", "steps[0].http", "must be a mapping"),
    ],
)
def test_bad_http_specs_are_reported_inside_http(http: object, path: str, message: str) -> None:
    found_path, found_message = only_issue(definition({"id": "a", "http": http}))
    assert found_path == path
    assert found_message.startswith(message)


def test_bad_env_name_and_reserved_env_name_are_reported_at_the_key() -> None:
    data = definition(shell_step(env={"1BAD": "x", "STEPWISE_OUTPUT": "/tmp/x", "OK": "y"}))
    assert issues(data) == [
        (
            'steps[0].env["1BAD"]',
            "key must be letters, digits and underscores, not starting with a digit",
        ),
        (
            "steps[0].env.STEPWISE_OUTPUT",
            "key is reserved: the engine sets the STEPWISE_ variables",
        ),
    ]


def test_choice_param_without_choices_is_rejected_at_choices() -> None:
    data = definition(params=[{"name": "ok"}, {"name": "service", "type": "choice"}])
    assert only_issue(data) == ("params[1].choices", "required for choice params")


def test_min_on_a_string_param_is_rejected_at_min() -> None:
    data = definition(params=[{"name": "ticket", "min": 1}])
    assert only_issue(data) == ("params[0].min", "only allowed on integer and number params")


def test_default_not_valid_for_its_param_is_rejected_at_default() -> None:
    data = definition(params=[{"name": "replicas", "type": "integer", "min": 1, "default": 0}])
    assert only_issue(data) == ("params[0].default", "must be at least 1")


def test_bad_regex_is_rejected_at_pattern() -> None:
    path, message = only_issue(definition(params=[{"name": "ticket", "pattern": "[a-"}]))
    assert path == "params[0].pattern"
    assert message.startswith("not a valid regular expression")


def test_bad_param_type_and_unknown_param_key_are_reported() -> None:
    data = definition(params=[{"name": "n", "type": "float", "colour": "red"}])
    found = dict(issues(data))
    assert found["params[0].type"].startswith("must be one of 'string', 'text'")
    assert found["params[0].colour"] == "unknown key"


def test_jinja_syntax_error_in_shell_is_reported_with_its_line() -> None:
    data = definition(
        {"id": "g", "steps": [shell_step("ok"), shell_step("bad", shell="echo a\necho {{ x }\n")]}
    )
    assert only_issue(data) == (
        "steps[0].steps[1].shell",
        "template syntax error on line 2: unexpected '}'",
    )


def test_unclosed_block_in_a_template_is_a_syntax_error() -> None:
    path, message = only_issue(definition(shell_step(shell="{% if x %}echo")))
    assert path == "steps[0].shell"
    assert message.startswith("template syntax error on line 1: Unexpected end of template")


def test_jinja_syntax_error_in_if_is_reported() -> None:
    data = definition(shell_step(**{"if": "steps.check.status =="}))
    assert only_issue(data) == (
        "steps[0].if",
        "expression syntax error: unexpected 'end of template'",
    )


def test_template_braces_in_if_are_a_syntax_error() -> None:
    path, message = only_issue(definition(shell_step(**{"if": "{{ params.go }}"})))
    assert path == "steps[0].if"
    assert message.startswith("expression syntax error")


@pytest.mark.parametrize(
    ("step", "path"),
    [
        ({"id": "a", "http": {"url": "https://x/{{ a"}}, "steps[0].http.url"),
        (
            {"id": "a", "http": {"url": "u", "headers": {"X-A": "{{ }}"}}},
            "steps[0].http.headers.X-A",
        ),
        ({"id": "a", "http": {"url": "u", "query": {"q": "{% for %}"}}}, "steps[0].http.query.q"),
        ({"id": "a", "http": {"url": "u", "body": "{{ a b }}"}}, "steps[0].http.body"),
        (
            {"id": "a", "http": {"url": "u", "json": {"items": [1, {"v": "{{ x ) }}"}]}}},
            "steps[0].http.json.items[1].v",
        ),
        ({"id": "a", "shell": "echo", "env": {"A": "{{ x"}}, "steps[0].env.A"),
        ({"id": "a", "shell": "echo", "workdir": "/srv/{{ x"}, "steps[0].workdir"),
    ],
)
def test_jinja_syntax_errors_in_every_template_field_are_reported(
    step: dict[str, Any], path: str
) -> None:
    found_path, message = only_issue(definition(step))
    assert found_path == path
    assert message.startswith("template syntax error on line 1")


def test_jinja_syntax_error_in_outputs_is_reported() -> None:
    path, message = only_issue(definition(outputs={"count": "{{ steps.a.outputs.count"}))
    assert path == "outputs.count"
    assert message.startswith("template syntax error")


def test_yaml_dates_inside_http_json_are_reported_at_their_path() -> None:
    text = textwrap.dedent(
        """\
        slug: demo
        name: Demo
        steps:
          - id: a
            http: {url: u, json: {items: [{when: 2024-05-31}]}}
        """
    )
    with pytest.raises(DefinitionError) as caught:
        load_definition_text(text)
    assert caught.value.errors == [
        DefinitionIssue(
            "steps[0].http.json.items[0].when", "must be a JSON value (quote dates and times)"
        )
    ]


def test_header_names_that_are_not_identifiers_are_quoted_in_the_path() -> None:
    data = definition({"id": "a", "http": {"url": "u", "headers": {"X Weird": 5}}})
    assert only_issue(data) == ('steps[0].http.headers["X Weird"]', "must be a string")


def test_wrong_types_get_short_messages() -> None:
    data = definition(
        shell_step(continue_on_error="yes", name=5),
        labels={"team": 1},
        description=["not", "text"],
    )
    assert sorted(issues(data)) == [
        ("description", "must be a string"),
        ("labels.team", "must be a string"),
        ("steps[0].continue_on_error", "must be true or false"),
        ("steps[0].name", "must be a string"),
    ]


def test_many_problems_are_reported_together() -> None:
    data = {
        "slug": "Bad Slug",
        "name": "Demo",
        "owner": "sre",
        "params": [{"name": "n", "type": "integer", "max": 5, "default": 9}, {"name": "n"}],
        "steps": [
            shell_step("a", timeout="soon"),
            {"id": "g", "retries": 5, "steps": [shell_step("a", shell="{{ x }")]},
            {"id": "h", "http": {"url": "u", "verb": "GET"}, "env": {}},
            {"id": "nothing"},
        ],
    }
    assert sorted(path for path, _ in issues(data)) == [
        "owner",
        "params[0].default",
        "params[1].name",
        "slug",
        "steps[0].timeout",
        "steps[1].retries",
        "steps[1].steps[0].id",
        "steps[1].steps[0].shell",
        "steps[2].env",
        "steps[2].http.verb",
        "steps[3]",
    ]


# --- Loading text ---------------------------------------------------------------------------


def test_yaml_syntax_error_is_reported_at_the_root_with_its_line() -> None:
    text = textwrap.dedent(
        """\
        slug: demo
        name: Demo
        steps:
          - id: a
            shell: [echo
        """
    )
    with pytest.raises(DefinitionError) as caught:
        load_definition_text(text)
    [issue] = caught.value.errors
    assert issue.path == ""
    assert issue.message.startswith("invalid YAML:")
    assert "(line 6, column 1)" in issue.message


def test_duplicate_yaml_key_is_a_syntax_error_instead_of_silently_winning() -> None:
    with pytest.raises(DefinitionError) as caught:
        load_definition_text("slug: demo\nname: Demo\nslug: other\nsteps: []\n")
    assert caught.value.errors == [
        DefinitionIssue("", "invalid YAML: found duplicate key 'slug' (line 3, column 1)")
    ]


def test_yaml_merge_keys_may_override_merged_values() -> None:
    text = textwrap.dedent(
        """\
        slug: demo
        name: Demo
        steps:
          - &base {id: a, shell: echo a, timeout: 5s}
          - <<: *base
            id: b
        """
    )
    assert [step.id for step in load_definition_text(text).steps] == ["a", "b"]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("slug: demo\nname: Demo\ntimeout: " + "1" * 5000 + "\nsteps: []\n", "4300 digits"),
        ('{"slug": "demo", "timeout": ' + "1" * 5000 + "}", "4300 digits"),
        ("slug: demo\nname: 2026-13-45\nsteps: []\n", "month must be in 1..12"),
    ],
    ids=["yaml-long-integer", "json-long-integer", "yaml-date-that-does-not-exist"],
)
def test_a_value_python_cannot_hold_is_a_definition_error(text: str, reason: str) -> None:
    with pytest.raises(DefinitionError) as caught:
        load_definition_text(text)
    [issue] = caught.value.errors
    assert issue.path == ""
    assert issue.message.startswith("a value cannot be read:") and reason in issue.message
    assert "set_int_max_str_digits" not in issue.message


def test_text_nested_too_deeply_is_a_definition_error() -> None:
    with pytest.raises(DefinitionError) as caught:
        load_definition_text("slug: demo\nname: " + "[" * 50_000 + "]" * 50_000 + "\n")
    assert caught.value.errors == [DefinitionIssue("", "the text is nested too deeply")]


def test_duplicate_json_key_is_rejected() -> None:
    with pytest.raises(DefinitionError, match="invalid JSON: duplicate key 'slug'"):
        load_definition_text('{"slug": "a", "slug": "b", "name": "x", "steps": []}')


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- id: a\n  shell: echo\n", "a runbook definition must be a mapping, not a list"),
        ("just words", "a runbook definition must be a mapping, not a string"),
        ("42", "a runbook definition must be a mapping, not a number"),
        ("", "the definition is empty"),
        ("# only a comment\n", "the definition is empty"),
    ],
)
def test_top_level_that_is_not_a_mapping_is_rejected(text: str, message: str) -> None:
    with pytest.raises(DefinitionError) as caught:
        load_definition_text(text)
    assert caught.value.errors == [DefinitionIssue("", message)]


def test_parse_definition_rejects_non_mappings() -> None:
    assert issues(["a"]) == [("", "a runbook definition must be a mapping, not a list")]


def test_definition_error_lists_every_issue_on_its_own_line() -> None:
    with pytest.raises(DefinitionError) as caught:
        parse_definition({"slug": "demo", "owner": "x"})
    assert str(caught.value) == "name: required\nsteps: required\nowner: unknown key"
    assert caught.value.by_path() == {
        "name": ["required"],
        "steps": ["required"],
        "owner": ["unknown key"],
    }


def test_canonical_form_keeps_required_true_next_to_a_default():
    definition = parse_definition(
        {
            "slug": "req",
            "name": "Req",
            "params": [{"name": "ticket", "type": "string", "default": "OPS-1", "required": True}],
            "steps": [{"id": "a", "shell": "true"}],
        }
    )
    again = parse_definition(definition.canonical())
    assert again.params[0].required is True
    assert again == definition


def test_approval_cannot_need_more_approvals_than_it_names_people() -> None:
    def gate(required: int, **approvers: list[str]) -> dict[str, Any]:
        spec = {"message": "Go?", "approvers": approvers, "required": required}
        return definition({"id": "gate", "approval": spec})

    assert only_issue(gate(2, users=["bob", "bob"])) == (
        "steps[0].approval.required",
        "2 approvals needed, but only 1 approver is named (bob) and no group: it could never"
        " be approved",
    )
    assert parse_definition(gate(2, users=["bob", "carol"])).steps[0].approval.required == 2
    assert parse_definition(gate(5, users=["bob"], groups=["sre"])).steps[0].approval.required == 5
    # A version saved before the rule still loads; its runs fail at the gate, saying why.
    assert parse_definition(gate(2, users=["bob"]), stored=True).steps[0].approval.required == 2
