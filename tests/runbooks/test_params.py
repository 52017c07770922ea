"""Param specs, and coercing the values a run is started with."""

import datetime as dt
from typing import Any

import pytest
from pydantic import ValidationError

from runbooks.params import ParamsError, ParamSpec, coerce_params, coerce_value, secret_names


def spec(**fields: Any) -> ParamSpec:
    return ParamSpec.model_validate({"name": "p", **fields})


def spec_errors(**fields: Any) -> dict[tuple, str]:
    with pytest.raises(ValidationError) as caught:
        spec(**fields)
    return {error["loc"]: error["msg"] for error in caught.value.errors()}


def coerce_errors(specs: list[ParamSpec], values: dict[str, object]) -> dict[str, list[str]]:
    with pytest.raises(ParamsError) as caught:
        coerce_params(specs, values)
    return caught.value.errors


# --- Specs ----------------------------------------------------------------------------------


def test_required_defaults_to_true_without_a_default() -> None:
    assert spec().required is True


def test_required_defaults_to_false_when_a_default_is_given() -> None:
    assert spec(default="x").required is False


def test_explicit_required_wins_over_the_default_rule() -> None:
    assert spec(default="x", required=True).required is True
    assert spec(required=False).required is False


def test_type_defaults_to_string() -> None:
    assert spec().type == "string"


def test_unknown_key_in_a_spec_is_rejected() -> None:
    assert spec_errors(colour="red") == {("colour",): "Extra inputs are not permitted"}


@pytest.mark.parametrize("name", ["Service", "1st", "with-dash", ""])
def test_name_must_be_lowercase_identifier(name: str) -> None:
    errors = spec_errors(name=name)
    assert "lowercase" in errors[("name",)]


def test_choice_without_choices_is_rejected_at_choices() -> None:
    assert spec_errors(type="choice") == {("choices",): "required for choice params"}


def test_multichoice_with_empty_choices_is_rejected() -> None:
    assert spec_errors(type="multichoice", choices=[]) == {("choices",): "must not be empty"}


def test_choices_on_a_string_param_are_rejected() -> None:
    errors = spec_errors(type="string", choices=["a"])
    assert errors == {("choices",): "only allowed on choice and multichoice params"}


def test_duplicate_and_non_scalar_choices_are_rejected_at_their_index() -> None:
    errors = spec_errors(type="choice", choices=["a", {"b": 1}, "a"])
    assert errors == {
        ("choices", 1): "must be a string or a number",
        ("choices", 2): "duplicate choice 'a'",
    }


def test_min_on_a_string_param_is_rejected() -> None:
    assert spec_errors(type="string", min=1) == {
        ("min",): "only allowed on integer and number params"
    }


def test_pattern_on_an_integer_param_is_rejected() -> None:
    errors = spec_errors(type="integer", pattern="^1")
    assert errors == {("pattern",): "only allowed on string, text and secret params"}


def test_min_that_is_not_a_number_gets_one_message() -> None:
    assert spec_errors(type="number", min="low") == {("min",): "must be a number"}


def test_max_below_min_is_rejected_at_max() -> None:
    assert spec_errors(type="integer", min=5, max=1) == {("max",): "must not be less than min (5)"}


def test_max_length_below_min_length_is_rejected() -> None:
    errors = spec_errors(min_length=5, max_length=2)
    assert errors == {("max_length",): "must not be less than min_length (5)"}


def test_bad_regex_pattern_is_rejected_with_the_regex_error() -> None:
    errors = spec_errors(pattern="(unclosed")
    assert errors[("pattern",)].startswith("not a valid regular expression: missing )")


def test_default_outside_the_range_is_rejected_at_default() -> None:
    assert spec_errors(type="integer", max=20, default=50) == {("default",): "must be at most 20"}


def test_default_not_among_the_choices_is_rejected_at_default() -> None:
    errors = spec_errors(type="choice", choices=["api", "web"], default="db")
    assert errors == {("default",): "must be one of: api, web"}


def test_default_not_matching_the_pattern_is_rejected() -> None:
    errors = spec_errors(pattern="^OPS-[0-9]+$", default="JIRA-1")
    assert errors == {("default",): "must match the pattern ^OPS-[0-9]+$"}


def test_default_is_stored_coerced() -> None:
    assert spec(type="date", default=dt.date(2024, 5, 31)).default == "2024-05-31"
    assert spec(type="multichoice", choices=["a", "b"], default="b,a").default == ["b", "a"]
    assert spec(type="boolean", default="yes").default is True


def test_unknown_type_is_rejected() -> None:
    assert ("type",) in spec_errors(type="float")


def test_secret_names_lists_only_secret_params() -> None:
    specs = [spec(name="token", type="secret"), spec(name="service")]
    assert secret_names(specs) == {"token"}


def test_display_label_falls_back_to_the_name() -> None:
    assert spec(label="Service").display_label == "Service"
    assert spec().display_label == "p"


# --- Coercion: accepted values ------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "value", "expected"),
    [
        ({"type": "string"}, "hello", "hello"),
        ({"type": "text"}, "line 1\nline 2", "line 1\nline 2"),
        ({"type": "secret"}, "s3cret", "s3cret"),
        ({"type": "integer"}, 12, 12),
        ({"type": "integer"}, "12", 12),
        ({"type": "integer"}, " -3 ", -3),
        ({"type": "integer"}, 4.0, 4),
        ({"type": "number"}, 2, 2),
        ({"type": "number"}, 1.5, 1.5),
        ({"type": "number"}, "1.5", 1.5),
        ({"type": "number"}, "7", 7),
        ({"type": "boolean"}, True, True),
        ({"type": "boolean"}, False, False),
        ({"type": "boolean"}, "yes", True),
        ({"type": "boolean"}, "OFF", False),
        ({"type": "boolean"}, "1", True),
        ({"type": "boolean"}, "false", False),
        ({"type": "choice", "choices": ["api", "web"]}, "web", "web"),
        ({"type": "choice", "choices": [1, 2, 3]}, "2", 2),
        ({"type": "choice", "choices": [1, 2, 3]}, 3, 3),
        ({"type": "multichoice", "choices": ["a", "b", "c"]}, ["c", "a"], ["c", "a"]),
        ({"type": "multichoice", "choices": ["a", "b", "c"]}, "a, c", ["a", "c"]),
        ({"type": "multichoice", "choices": ["a", "b"]}, ["a", "a"], ["a"]),
        ({"type": "multichoice", "choices": [10, 20]}, "10,20", [10, 20]),
        ({"type": "date"}, "2024-05-31", "2024-05-31"),
        ({"type": "date"}, dt.date(2024, 5, 31), "2024-05-31"),
        ({"type": "datetime"}, "2024-05-31T14:30:00Z", "2024-05-31T14:30:00+00:00"),
        ({"type": "datetime"}, "2024-05-31T14:30", "2024-05-31T14:30:00"),
        (
            {"type": "datetime"},
            dt.datetime(2024, 5, 31, 14, 30, tzinfo=dt.UTC),
            "2024-05-31T14:30:00+00:00",
        ),
        ({"type": "json"}, {"a": [1, None]}, {"a": [1, None]}),
        ({"type": "json"}, [1, 2], [1, 2]),
        ({"type": "json"}, '{"a": 1}', {"a": 1}),
        ({"type": "json"}, '"text"', "text"),
    ],
)
def test_values_are_coerced_from_typed_and_string_input(
    fields: dict[str, Any], value: object, expected: object
) -> None:
    result = coerce_params([spec(**fields)], {"p": value})
    assert result == {"p": expected}
    assert type(result["p"]) is type(expected)


def test_values_within_constraints_are_accepted() -> None:
    specs = [
        spec(name="replicas", type="integer", min=1, max=20),
        spec(name="ticket", pattern="^OPS-[0-9]+$", min_length=5, max_length=10),
    ]
    assert coerce_params(specs, {"replicas": "20", "ticket": "OPS-42"}) == {
        "replicas": 20,
        "ticket": "OPS-42",
    }


def test_pattern_is_searched_not_fully_matched() -> None:
    assert coerce_params([spec(pattern="[0-9]")], {"p": "abc1"}) == {"p": "abc1"}


# --- Coercion: defaults and absent values -------------------------------------------------


def test_defaults_fill_in_missing_params() -> None:
    specs = [
        spec(name="service", type="choice", choices=["api", "web"], default="api"),
        spec(name="replicas", type="integer", default=2),
    ]
    assert coerce_params(specs, {}) == {"service": "api", "replicas": 2}


def test_mutable_defaults_are_copied_per_run() -> None:
    tags = spec(type="json", default={"a": []})
    first = coerce_params([tags], {})
    first["p"]["a"].append(1)
    assert coerce_params([tags], {}) == {"p": {"a": []}}


def test_optional_params_without_value_or_default_are_none() -> None:
    specs = [
        spec(name="ticket", required=False),
        spec(name="count", type="integer", required=False),
    ]
    assert coerce_params(specs, {}) == {"ticket": None, "count": None}


def test_empty_string_for_an_optional_non_string_param_counts_as_absent() -> None:
    specs = [
        spec(name="count", type="integer", required=False),
        spec(name="size", type="integer", default=3),
        spec(name="flag", type="boolean", required=False),
    ]
    assert coerce_params(specs, {"count": "", "size": " ", "flag": ""}) == {
        "count": None,
        "size": 3,
        "flag": None,
    }


def test_empty_string_for_an_optional_string_param_is_kept_without_checking_the_pattern() -> None:
    ticket = spec(name="ticket", pattern="^OPS-[0-9]+$", required=False)
    assert coerce_params([ticket], {"ticket": ""}) == {"ticket": ""}


def test_empty_string_for_a_required_string_param_is_missing() -> None:
    assert coerce_errors([spec(name="service")], {"service": ""}) == {"service": ["required"]}


def test_empty_string_for_a_required_param_with_a_default_takes_the_default() -> None:
    assert coerce_params([spec(default="x", required=True)], {"p": ""}) == {"p": "x"}


def test_empty_list_for_a_required_multichoice_is_missing() -> None:
    regions = spec(name="regions", type="multichoice", choices=["eu", "us"])
    assert coerce_errors([regions], {"regions": []}) == {"regions": ["required"]}


def test_none_counts_as_absent() -> None:
    assert coerce_params([spec(type="integer", default=5)], {"p": None}) == {"p": 5}


# --- Coercion: rejections -----------------------------------------------------------------


def test_missing_required_param_is_reported_by_name() -> None:
    assert coerce_errors([spec(name="service")], {}) == {"service": ["required"]}


def test_undeclared_param_is_reported_as_unknown() -> None:
    assert coerce_errors([spec(name="service")], {"service": "api", "colour": "red"}) == {
        "colour": ["unknown parameter"]
    }


@pytest.mark.parametrize(
    ("fields", "value", "message"),
    [
        ({"type": "string"}, 42, "must be a string"),
        ({"type": "secret"}, ["a"], "must be a string"),
        ({"type": "string", "min_length": 3}, "ab", "must be at least 3 characters long"),
        ({"type": "text", "max_length": 3}, "abcd", "must be at most 3 characters long"),
        ({"type": "string", "pattern": "^OPS-[0-9]+$"}, "OPS-x", "must match the pattern"),
        ({"type": "integer"}, 1.5, "must be a whole number"),
        ({"type": "integer"}, "1.5", "must be a whole number"),
        ({"type": "integer"}, True, "must be a whole number"),
        ({"type": "integer"}, "twelve", "must be a whole number"),
        ({"type": "integer", "min": 1}, 0, "must be at least 1"),
        ({"type": "integer", "max": 20}, "21", "must be at most 20"),
        ({"type": "number"}, "abc", "must be a number"),
        ({"type": "number"}, False, "must be a number"),
        ({"type": "number"}, float("nan"), "must be a finite number"),
        ({"type": "number", "min": 0.5}, 0.25, "must be at least 0.5"),
        ({"type": "boolean"}, "maybe", "must be true or false"),
        ({"type": "boolean"}, 2, "must be true or false"),
        ({"type": "choice", "choices": ["api", "web"]}, "db", "must be one of: api, web"),
        ({"type": "choice", "choices": [1, 2]}, True, "must be one of: 1, 2"),
        ({"type": "choice", "choices": ["api", "web"]}, "API", "must be one of: api, web"),
        (
            {"type": "multichoice", "choices": ["a", "b"]},
            ["a", "x", "y"],
            "'x', 'y' not among the choices: a, b",
        ),
        ({"type": "multichoice", "choices": ["a"]}, 5, "must be a list of choices"),
        ({"type": "date"}, "31/05/2024", "must be a date like 2024-05-31"),
        ({"type": "date"}, "2024-02-30", "must be a date like 2024-05-31"),
        ({"type": "date"}, "20240531", "must be a date like 2024-05-31"),
        ({"type": "datetime"}, "yesterday", "must be a date and time like"),
        ({"type": "json"}, "{not json", "must be valid JSON"),
        ({"type": "json"}, {"when": dt.date(2024, 1, 1)}, "must be a JSON value"),
    ],
)
def test_invalid_values_are_rejected_with_a_message_keyed_by_name(
    fields: dict[str, Any], value: object, message: str
) -> None:
    errors = coerce_errors([spec(**fields)], {"p": value})
    assert list(errors) == ["p"]
    assert len(errors["p"]) == 1
    assert message in errors["p"][0]


def test_all_problems_are_reported_together() -> None:
    specs = [
        spec(name="service", type="choice", choices=["api", "web"]),
        spec(name="replicas", type="integer", min=1, max=20),
        spec(name="ticket", pattern="^OPS-[0-9]+$"),
        spec(name="dry_run", type="boolean", default=False),
    ]
    errors = coerce_errors(specs, {"replicas": "99", "ticket": "nope", "bogus": 1})
    assert errors == {
        "bogus": ["unknown parameter"],
        "service": ["required"],
        "replicas": ["must be at most 20"],
        "ticket": ["must match the pattern ^OPS-[0-9]+$"],
    }


def test_params_error_message_names_each_param() -> None:
    with pytest.raises(ParamsError) as caught:
        coerce_params([spec(name="service")], {"x": 1})
    assert str(caught.value) == "x: unknown parameter; service: required"


def test_coerce_value_raises_value_error_without_the_param_name() -> None:
    with pytest.raises(ValueError, match=r"^must be a whole number$"):
        coerce_value(spec(type="integer"), "x")


def test_result_keeps_declaration_order() -> None:
    specs = [spec(name="b", default="1"), spec(name="a", default="2")]
    assert list(coerce_params(specs, {"a": "x", "b": "y"})) == ["b", "a"]
