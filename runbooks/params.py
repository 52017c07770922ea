"""Runbook parameters: how they are declared, and how values given to a run are checked.

A param spec is part of a runbook definition (and, later, of an approval's form), so it is a
pydantic model that rejects unknown keys and rules that do not fit its type. Values arrive
from three places, typed JSON from the API and plain strings from the command line
(`-p replicas=3`) and HTML forms, and all go through `coerce_params`, so a run started from
anywhere gets the same params or the same error messages. Coerced values stay JSON-compatible
(dates as ISO strings) because they are stored on the run and rendered into templates.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Annotated, Any, Literal, Self, get_args

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

__all__ = [
    "PARAM_TYPES",
    "ParamSpec",
    "ParamType",
    "ParamsError",
    "coerce_params",
    "coerce_value",
    "located_error",
    "secret_names",
]

ParamType = Literal[
    "string",
    "text",
    "integer",
    "number",
    "boolean",
    "choice",
    "multichoice",
    "date",
    "datetime",
    "json",
    "secret",
]
PARAM_TYPES: tuple[str, ...] = get_args(ParamType)

_STRING_TYPES = frozenset({"string", "text", "secret"})
_NUMBER_TYPES = frozenset({"integer", "number"})
_CHOICE_TYPES = frozenset({"choice", "multichoice"})

_NAME = re.compile(r"[a-z_][a-z0-9_]*")
_INTEGER_TEXT = re.compile(r"[+-]?\d+")
_NUMBER_TEXT = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_DATE_TEXT = re.compile(r"\d{4}-\d{2}-\d{2}")
_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})


class ParamsError(ValueError):
    """The values given for a run do not fit its params; nothing may be started.

    `errors` maps each offending param name to its messages, which is the shape of the API's
    `validation-failed` details and of a form's field errors.
    """

    def __init__(self, errors: dict[str, list[str]]) -> None:
        self.errors = errors
        super().__init__(str(self))

    def __str__(self) -> str:
        return "; ".join(
            f"{name}: {message}" for name, messages in self.errors.items() for message in messages
        )


def located_error(
    title: str, issues: Iterable[tuple[tuple[str | int, ...], str, object]]
) -> ValidationError:
    """Build a ValidationError whose issues sit at the given locations.

    A validator that checks several fields at once can only raise at its own location; raising
    this instead (pydantic keeps the locations, prefixed by where the validator sits) reports
    each problem at the key a person has to fix, e.g. `params[1].default`.
    """
    return ValidationError.from_exception_data(
        title,
        [
            InitErrorDetails(type=_rule_error(message), loc=loc, input=value)
            for loc, message, value in issues
        ],
    )


def _rule_error(message: str) -> PydanticCustomError:
    # The message goes in through the context so that braces in it are never formatted.
    return PydanticCustomError("rule", "{detail}", {"detail": message})


def _require_number(value: object) -> object:
    # Checked before the int | float union so that a bad value gets one clear message
    # instead of one per union member.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _rule_error("must be a number")
    return value


Number = Annotated[int | float, BeforeValidator(_require_number)]


class ParamSpec(BaseModel):
    """One declared parameter of a runbook.

    `required` defaults to true unless a default is given, and is always a bool after
    validation. `default` holds the coerced default (e.g. an ISO string for a date), already
    checked against the spec's own rules.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    name: str
    label: str | None = None
    description: str | None = None
    type: ParamType = "string"
    required: bool = True
    default: Any = None
    choices: list[Any] | None = None
    min: Number | None = None
    max: Number | None = None
    min_length: int | None = Field(default=None, ge=0)
    max_length: int | None = Field(default=None, ge=0)
    pattern: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _required_unless_default(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "required" not in data:
            return {**data, "required": data.get("default") is None}
        return data

    @model_validator(mode="after")
    def _check_rules(self) -> Self:
        issues = list(self._rule_problems())
        if not issues and self.default is not None:
            # Only a spec whose own rules hold can judge its default. The coerced default is
            # kept so that runs and forms share one representation (an ISO date string).
            try:
                self.default = coerce_value(self, self.default)
            except ValueError as exc:
                issues.append((("default",), str(exc), self.default))
        if issues:
            raise located_error("ParamSpec", issues)
        return self

    def _rule_problems(self) -> Iterable[tuple[tuple[str | int, ...], str, object]]:
        if not _NAME.fullmatch(self.name):
            yield (
                ("name",),
                "must start with a lowercase letter or underscore and contain only lowercase "
                "letters, digits and underscores",
                self.name,
            )
        if self.type in _CHOICE_TYPES:
            if self.choices is None:
                yield ("choices",), f"required for {self.type} params", None
            elif not self.choices:
                yield ("choices",), "must not be empty", self.choices
        elif self.choices is not None:
            yield ("choices",), "only allowed on choice and multichoice params", self.choices
        seen: list[object] = []
        for index, choice in enumerate(self.choices or ()):
            if isinstance(choice, bool) or not isinstance(choice, str | int | float):
                yield ("choices", index), "must be a string or a number", choice
            elif any(_same_choice(choice, earlier) for earlier in seen):
                yield ("choices", index), f"duplicate choice {choice!r}", choice
            else:
                seen.append(choice)

        for key in ("min", "max"):
            if getattr(self, key) is not None and self.type not in _NUMBER_TYPES:
                yield (key,), "only allowed on integer and number params", getattr(self, key)
        if self.min is not None and self.max is not None and self.max < self.min:
            yield ("max",), f"must not be less than min ({_number_text(self.min)})", self.max

        for key in ("min_length", "max_length", "pattern"):
            if getattr(self, key) is not None and self.type not in _STRING_TYPES:
                yield (key,), "only allowed on string, text and secret params", getattr(self, key)
        if (
            self.min_length is not None
            and self.max_length is not None
            and self.max_length < self.min_length
        ):
            yield ("max_length",), f"must not be less than min_length ({self.min_length})", None
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                yield ("pattern",), f"not a valid regular expression: {exc}", self.pattern

    @property
    def display_label(self) -> str:
        """What a form shows: the label, or the name when there is none."""
        return self.label or self.name

    @property
    def is_secret(self) -> bool:
        """Secret values are masked in logs, API responses and the UI."""
        return self.type == "secret"


def secret_names(specs: Iterable[ParamSpec]) -> set[str]:
    """Names of the params whose values must be masked wherever they would be shown."""
    return {spec.name for spec in specs if spec.is_secret}


def coerce_params(specs: Sequence[ParamSpec], values: Mapping[str, object]) -> dict[str, object]:
    """Check and coerce a complete set of param values for a run.

    Returns every declared param, in declaration order: the coerced value, else the default,
    else None for an optional param (so templates can test `params.x is none`). Raises
    ParamsError with every problem at once, keyed by param name, so a form can show them all:
    missing required params, values of the wrong type or outside the spec's constraints, and
    names the runbook does not declare.
    """
    errors: dict[str, list[str]] = {}
    result: dict[str, object] = {}
    declared = {spec.name for spec in specs}
    for name in values:
        if name not in declared:
            errors.setdefault(str(name), []).append("unknown parameter")

    for spec in specs:
        value = values.get(spec.name)
        if _is_blank(spec, value):
            if spec.default is not None:
                result[spec.name] = copy.deepcopy(spec.default)
            elif spec.required:
                errors.setdefault(spec.name, []).append("required")
            else:
                result[spec.name] = None
            continue
        try:
            result[spec.name] = coerce_value(spec, value)
        except ValueError as exc:
            errors.setdefault(spec.name, []).append(str(exc))

    if errors:
        raise ParamsError(errors)
    return result


def coerce_value(spec: ParamSpec, value: object) -> object:
    """Coerce one non-blank value to `spec`'s type and check its constraints.

    Raises ValueError with a short message ("must be at most 20") that does not repeat the
    param's name, because callers key it by name already.
    """
    coerce = _COERCERS[spec.type]
    return coerce(spec, value)


def _is_blank(spec: ParamSpec, value: object) -> bool:
    """Whether a value counts as not given.

    HTML forms send "" for an empty field; for a non-string param that can only mean "no
    value". For string params "" is a value unless the param is required, where an empty
    field must be reported as missing rather than accepted.
    """
    if value is None:
        return True
    if isinstance(value, str):
        if spec.type in _STRING_TYPES:
            return value == "" and spec.required
        return value.strip() == ""
    if spec.type == "multichoice" and isinstance(value, list | tuple):
        return len(value) == 0 and spec.required
    return False


def _coerce_string(spec: ParamSpec, value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    if value == "" and not spec.required:
        # An optional field left empty is allowed even when a filled one must match a pattern.
        return value
    if spec.min_length is not None and len(value) < spec.min_length:
        raise ValueError(f"must be at least {spec.min_length} characters long")
    if spec.max_length is not None and len(value) > spec.max_length:
        raise ValueError(f"must be at most {spec.max_length} characters long")
    if spec.pattern is not None and re.search(spec.pattern, value) is None:
        raise ValueError(f"must match the pattern {spec.pattern}")
    return value


def _coerce_integer(spec: ParamSpec, value: object) -> int:
    number: int
    if isinstance(value, bool):
        raise ValueError("must be a whole number")
    if isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        # JSON encoders may write 2 as 2.0; it is still a whole number.
        number = int(value)
    elif isinstance(value, str) and _INTEGER_TEXT.fullmatch(value.strip()):
        number = int(value.strip())
    else:
        raise ValueError("must be a whole number")
    _check_range(spec, number)
    return number


def _coerce_number(spec: ParamSpec, value: object) -> int | float:
    number: int | float
    if isinstance(value, bool):
        raise ValueError("must be a number")
    if isinstance(value, int | float):
        number = value
    elif isinstance(value, str) and _NUMBER_TEXT.fullmatch(value.strip()):
        text = value.strip()
        number = int(text) if _INTEGER_TEXT.fullmatch(text) else float(text)
    else:
        raise ValueError("must be a number")
    if isinstance(number, float) and not math.isfinite(number):
        raise ValueError("must be a finite number")
    _check_range(spec, number)
    return number


def _check_range(spec: ParamSpec, number: float) -> None:
    if spec.min is not None and number < spec.min:
        raise ValueError(f"must be at least {_number_text(spec.min)}")
    if spec.max is not None and number > spec.max:
        raise ValueError(f"must be at most {_number_text(spec.max)}")


def _coerce_boolean(spec: ParamSpec, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise ValueError("must be true or false (or yes/no, on/off, 1/0)")


def _coerce_choice(spec: ParamSpec, value: object) -> object:
    choices = spec.choices or []
    for choice in choices:
        if _matches_choice(choice, value):
            return choice
    raise ValueError(f"must be one of: {_choices_text(choices)}")


def _coerce_multichoice(spec: ParamSpec, value: object) -> list[object]:
    choices = spec.choices or []
    if isinstance(value, str):
        items: list[object] = [part.strip() for part in value.split(",") if part.strip()]
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        raise ValueError("must be a list of choices or a comma-separated string")
    chosen: list[object] = []
    unknown: list[str] = []
    for item in items:
        match = next((choice for choice in choices if _matches_choice(choice, item)), _MISSING)
        if match is _MISSING:
            unknown.append(repr(item))
        elif match not in chosen:
            chosen.append(match)
    if unknown:
        raise ValueError(f"{', '.join(unknown)} not among the choices: {_choices_text(choices)}")
    return chosen


def _coerce_date(spec: ParamSpec, value: object) -> str:
    # YAML reads an unquoted 2024-05-31 as a date, so a default may arrive as one.
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, str) and _DATE_TEXT.fullmatch(value.strip()):
        try:
            return dt.date.fromisoformat(value.strip()).isoformat()
        except ValueError:
            pass
    raise ValueError("must be a date like 2024-05-31")


def _coerce_datetime(spec: ParamSpec, value: object) -> str:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, dt.date):
        return dt.datetime.combine(value, dt.time()).isoformat()
    if isinstance(value, str):
        try:
            return dt.datetime.fromisoformat(value.strip()).isoformat()
        except ValueError:
            pass
    raise ValueError("must be a date and time like 2024-05-31T14:30:00Z")


def _coerce_json(spec: ParamSpec, value: object) -> object:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"must be valid JSON ({exc.msg} at position {exc.pos})") from None
    if not _is_json(value):
        raise ValueError("must be a JSON value")
    return value


def _is_json(value: object) -> bool:
    if value is None or isinstance(value, str | bool | int):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_is_json(item) for item in value)
    if isinstance(value, dict):
        return all(isinstance(key, str) and _is_json(item) for key, item in value.items())
    return False


_COERCERS: dict[str, Callable[[ParamSpec, Any], object]] = {
    "string": _coerce_string,
    "text": _coerce_string,
    "secret": _coerce_string,
    "integer": _coerce_integer,
    "number": _coerce_number,
    "boolean": _coerce_boolean,
    "choice": _coerce_choice,
    "multichoice": _coerce_multichoice,
    "date": _coerce_date,
    "datetime": _coerce_datetime,
    "json": _coerce_json,
}

_MISSING = object()


def _matches_choice(choice: object, value: object) -> bool:
    """Compare a given value with a declared choice.

    Strings from a command line or a form are compared with a number choice by text, and
    booleans never equal numbers (in Python `True == 1`).
    """
    if isinstance(value, bool) or isinstance(choice, bool):
        return value is choice
    if isinstance(value, str):
        if isinstance(choice, str):
            return value == choice
        text = value.strip()
        if not _NUMBER_TEXT.fullmatch(text):
            return False
        return float(text) == choice
    if isinstance(value, int | float) and isinstance(choice, int | float):
        return value == choice
    return False


def _same_choice(a: object, b: object) -> bool:
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    return isinstance(a, int | float) and isinstance(b, int | float) and a == b


def _choices_text(choices: Iterable[object]) -> str:
    return ", ".join(str(choice) for choice in choices)


def _number_text(number: float) -> str:
    if isinstance(number, float) and number.is_integer():
        return str(int(number))
    return str(number)
