"""The runbook definition schema: what a runbook's YAML may say, and what is wrong with it.

A definition is checked once, when a version is saved, so everything that can be known
without running it is checked here: structure (unknown keys are errors, so a typo never
silently disables a setting), value rules, unique step ids, and the syntax of every Jinja2
template and `if` expression. Problems come back together, each at the path a person has to
edit (`steps[2].http.url`) with a short sentence, because fixing one error per save is
miserable.

Steps are a discriminated union chosen by which kind key a step has (`shell`, `http`,
`sleep`, or `steps` for a group). Adding a kind means writing its model and adding it to
`_StepUnion`; the kind list in error messages and the discriminator follow from that.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, NamedTuple, get_args

import yaml
from jinja2 import TemplateAssertionError, TemplateSyntaxError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    JsonValue,
    Tag,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from runbooks.durations import DURATION_PATTERN, MAX_DURATION_SECONDS, parse_duration
from runbooks.params import ParamSpec, located_error

__all__ = [
    "STEP_KEYS",
    "STEP_MODELS",
    "BaseStep",
    "DefinitionError",
    "DefinitionIssue",
    "GroupStep",
    "HttpSpec",
    "HttpStep",
    "NumberedStep",
    "Retries",
    "RunbookDefinition",
    "ShellStep",
    "SleepStep",
    "Step",
    "load_definition_text",
    "parse_definition",
]


# --- Errors ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DefinitionIssue:
    """One problem in a definition: where (`steps[2].http.url`, "" for the whole) and what."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class DefinitionError(ValueError):
    """A definition was rejected; `errors` holds every problem found, in document order."""

    def __init__(self, errors: list[DefinitionIssue]) -> None:
        self.errors = errors
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(str(issue) for issue in self.errors)

    def by_path(self) -> dict[str, list[str]]:
        """Messages grouped by path: the shape of the API's `validation-failed` details."""
        grouped: dict[str, list[str]] = {}
        for issue in self.errors:
            grouped.setdefault(issue.path, []).append(issue.message)
        return grouped


def _rule(message: str) -> PydanticCustomError:
    # The message goes in through the context so that braces in it (Jinja!) are never
    # treated as format fields.
    return PydanticCustomError("rule", "{detail}", {"detail": message})


# --- Field types ----------------------------------------------------------------------------

_JINJA = ImmutableSandboxedEnvironment()

_SLUG = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_STEP_ID = re.compile(r"[a-z_][a-z0-9_-]*")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _check_slug(value: str) -> str:
    if not _SLUG.fullmatch(value):
        raise _rule(
            "must be 1 to 63 lowercase letters, digits and dashes, starting with a letter or digit"
        )
    return value


def _check_step_id(value: str) -> str:
    if not _STEP_ID.fullmatch(value):
        raise _rule(
            "must start with a lowercase letter or underscore and contain only lowercase "
            "letters, digits, underscores and dashes"
        )
    return value


def _check_env_name(value: str) -> str:
    if not _ENV_NAME.fullmatch(value):
        raise _rule("must be letters, digits and underscores, not starting with a digit")
    if value.upper().startswith("STEPWISE_"):
        raise _rule("is reserved: the engine sets the STEPWISE_ variables")
    return value


def _check_not_blank(value: str) -> str:
    if not value.strip():
        raise _rule("must not be empty")
    return value


def _check_template(value: str) -> str:
    try:
        _JINJA.parse(value)
    except TemplateSyntaxError as exc:
        raise _rule(f"template syntax error on line {exc.lineno}: {exc.message}") from None
    return value


def _expression_from_bool(value: object) -> object:
    # `if: false` is a natural way to switch a step off; YAML hands us a bool for it.
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def _check_expression(value: str) -> str:
    if not value.strip():
        raise _rule("must not be empty")
    try:
        _JINJA.compile_expression(value)
    except TemplateAssertionError:
        # An unknown filter or test: the environment that renders runs may provide it, so
        # only the renderer can judge; this check is about syntax.
        pass
    except TemplateSyntaxError as exc:
        where = f" on line {exc.lineno}" if "\n" in value.strip() else ""
        raise _rule(f"expression syntax error{where}: {exc.message}") from None
    return value


def _to_seconds(value: object) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise _rule(str(exc)) from None


def _upper(value: object) -> object:
    return value.upper() if isinstance(value, str) else value


#: Validation context of a definition read back from a saved version (`parse_definition`'s
#: `stored`).
_STORED = "stored"


def _clamped_when_stored(limit: float) -> BeforeValidator:
    """Shortens a number over `limit` to it in a saved version, instead of refusing it.

    A version was valid when saved, perhaps before a bound existed; refusing it now would make
    the runbook impossible to show or run. Clamped, it runs as if written at the bound."""

    def clamp(value: object, info: ValidationInfo) -> object:
        if not (isinstance(info.context, Mapping) and info.context.get(_STORED)):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool) and value > limit:
            return limit
        return value

    return BeforeValidator(clamp)


# Each type's JSON schema (the API's OpenAPI document) says in a pattern what its check
# enforces, where a pattern can; Template and Expression syntax cannot be.
Slug = Annotated[
    str,
    AfterValidator(_check_slug),
    WithJsonSchema({"type": "string", "pattern": f"^{_SLUG.pattern}$"}),
]
StepId = Annotated[
    str,
    AfterValidator(_check_step_id),
    WithJsonSchema({"type": "string", "pattern": f"^{_STEP_ID.pattern}$"}),
]
EnvName = Annotated[str, AfterValidator(_check_env_name)]
_NON_BLANK_SCHEMA = WithJsonSchema({"type": "string", "pattern": r"\S"})
NonBlank = Annotated[str, AfterValidator(_check_not_blank), _NON_BLANK_SCHEMA]
#: A string rendered with Jinja2 at run time; its syntax is checked when the version is saved.
Template = Annotated[str, AfterValidator(_check_template)]
NonBlankTemplate = Annotated[
    str, AfterValidator(_check_not_blank), AfterValidator(_check_template), _NON_BLANK_SCHEMA
]
#: A Jinja2 expression (no braces), as in `if: "steps.check.status == 'succeeded'"`.
Expression = Annotated[
    str,
    BeforeValidator(_expression_from_bool),
    AfterValidator(_check_expression),
    WithJsonSchema({"anyOf": [{"type": "string", "pattern": r"\S"}, {"type": "boolean"}]}),
]
#: Written as "30s", "5m", 500ms or a number of seconds; held as float seconds. At most
#: MAX_DURATION_SECONDS (a pattern cannot say that of the string forms).
Duration = Annotated[
    float,
    BeforeValidator(_to_seconds),
    # Listed after _to_seconds so that it runs first: before validators run last to first.
    _clamped_when_stored(float(MAX_DURATION_SECONDS)),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0, "maximum": MAX_DURATION_SECONDS},
                {"type": "string", "pattern": DURATION_PATTERN},
            ]
        }
    ),
]
HttpMethod = Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
StatusCode = Annotated[int, Field(ge=100, le=599)]


class _Model(BaseModel):
    # Strict: `parallel: "yes"` or `max: "3"` are mistakes worth pointing out, not guessing at.
    model_config = ConfigDict(extra="forbid", strict=True)


#: More retries than this is a loop, not a retry policy; a step that must poll for longer
#: can wait longer between attempts.
MAX_RETRIES = 100
#: Ten already multiplies a one-second delay past a day by the sixth retry.
MAX_BACKOFF = 10


class Retries(_Model):
    """How often a failed attempt is retried: after `delay * backoff ** (attempt - 1)`."""

    max: Annotated[int, _clamped_when_stored(MAX_RETRIES)] = Field(ge=0, le=MAX_RETRIES)
    delay: Duration = 0.0
    backoff: Annotated[float, _clamped_when_stored(MAX_BACKOFF)] = Field(
        default=1.0, ge=1, le=MAX_BACKOFF
    )

    def delay_before(self, attempt: int) -> float:
        """Seconds to wait before `attempt` (2 is the first retry), at most
        MAX_DURATION_SECONDS: even within the bounds the growth (366 days * 10 ** 99) would
        pass any datetime, and a run made before them may count attempts into the billions."""
        if self.delay == 0:  # also when backoff ** attempt would overflow
            return 0.0
        try:
            delay = self.delay * self.backoff ** max(attempt - 2, 0)
        except OverflowError:
            return float(MAX_DURATION_SECONDS)
        return min(delay, MAX_DURATION_SECONDS)


def _retries_shorthand(value: object) -> object:
    # `retries: 3` means three retries with no delay.
    if isinstance(value, bool):
        raise _rule("must be a number of retries or a mapping with max, delay and backoff")
    if isinstance(value, int):
        if value < 0:
            raise _rule("must be at least 0")
        if value > MAX_RETRIES:
            raise _rule(f"must be at most {MAX_RETRIES}")
        return {"max": value}
    return value


RetriesField = Annotated[
    Retries | None,
    BeforeValidator(
        _retries_shorthand,
        json_schema_input_type=Annotated[int, Field(ge=0, le=MAX_RETRIES)] | Retries | None,
    ),
]


# --- Steps ----------------------------------------------------------------------------------


class BaseStep(_Model):
    """Keys every step kind has. Kind-specific keys live on the subclasses, so a key that does
    not apply to a kind (`env` on an http step) is an unknown key there."""

    #: What the API and UI call the kind: "shell", "http", "sleep", "group".
    kind: ClassVar[str]
    #: The key in a definition that makes a step this kind.
    key: ClassVar[str]

    id: StepId
    name: str | None = None
    if_: Expression | None = Field(default=None, alias="if")
    continue_on_error: bool = False

    @property
    def display_name(self) -> str:
        """The name shown in the step tree; the id when no name is given."""
        return self.name or self.id

    @property
    def max_attempts(self) -> int:
        """Attempts the engine may make: 1 plus the retries, for kinds that retry."""
        retries: Retries | None = getattr(self, "retries", None)
        return 1 if retries is None else retries.max + 1


class ShellStep(BaseStep):
    """Runs `shell` with bash; template values in it are shell-quoted at run time."""

    kind: ClassVar[str] = "shell"
    key: ClassVar[str] = "shell"

    shell: NonBlankTemplate
    env: dict[EnvName, Template] = Field(default_factory=dict)
    workdir: Template | None = None
    timeout: Duration | None = None
    retries: RetriesField = None


class HttpSpec(_Model):
    """One HTTP request. `expect` None means any 2xx status counts as success."""

    method: Annotated[HttpMethod, BeforeValidator(_upper)] = "GET"
    url: NonBlankTemplate
    headers: dict[str, Template] = Field(default_factory=dict)
    query: dict[str, Template] = Field(default_factory=dict)
    json_: JsonValue = Field(default=None, alias="json")
    body: Template | None = None
    expect: list[StatusCode] | None = Field(default=None, min_length=1)
    timeout: Duration = 30.0
    follow_redirects: bool = False

    @field_validator("json_")
    @classmethod
    def _check_json_templates(cls, value: JsonValue) -> JsonValue:
        problems = []
        for loc, text in _json_strings(value, ()):
            try:
                _check_template(text)
            except PydanticCustomError as exc:
                problems.append((loc, exc.message(), text))
        if problems:
            raise located_error("HttpSpec", problems)
        return value

    @model_validator(mode="after")
    def _json_or_body(self) -> HttpSpec:
        if self.json_ is not None and self.body is not None:
            raise located_error(
                "HttpSpec", [(("body",), "cannot be used together with json", self.body)]
            )
        return self

    def accepts(self, status: int) -> bool:
        """Whether a response status counts as success."""
        return 200 <= status <= 299 if self.expect is None else status in self.expect


def _json_strings(value: object, loc: tuple[str | int, ...]) -> Iterator[tuple[tuple, str]]:
    if isinstance(value, str):
        yield loc, value
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _json_strings(item, (*loc, index))
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _json_strings(item, (*loc, key))


class HttpStep(BaseStep):
    """Makes the request in `http`; `timeout` here bounds the whole attempt."""

    kind: ClassVar[str] = "http"
    key: ClassVar[str] = "http"

    http: HttpSpec
    timeout: Duration | None = None
    retries: RetriesField = None


class SleepStep(BaseStep):
    """Waits; useful to let a restarted service settle. A `timeout` shorter than the sleep
    ends it `timed_out` (then `retries` apply, as for any step)."""

    kind: ClassVar[str] = "sleep"
    key: ClassVar[str] = "sleep"

    sleep: Duration
    timeout: Duration | None = None
    retries: RetriesField = None


class Approvers(_Model):
    """Who may decide: users by username and members of groups by name."""

    users: list[str] = Field(default_factory=list)
    groups: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _someone(self) -> Approvers:
        if not self.users and not self.groups:
            raise located_error("Approvers", [((), "name at least one user or group", None)])
        return self


#: A gate needing more approvals than this is never opened in practice; the bound keeps the
#: count inside the database's integer column (32 bits on PostgreSQL).
MAX_REQUIRED_APPROVALS = 100


class ApprovalSpec(_Model):
    """A human gate: the run waits until enough approvers approve, or one denies."""

    message: NonBlankTemplate
    approvers: Approvers
    required: Annotated[int, _clamped_when_stored(MAX_REQUIRED_APPROVALS)] = Field(
        default=1, ge=1, le=MAX_REQUIRED_APPROVALS
    )
    allow_self_approval: bool = False
    fields: list[ParamSpec] = Field(default_factory=list)
    timeout: Duration | None = None

    @model_validator(mode="after")
    def _reachable(self, info: ValidationInfo) -> ApprovalSpec:
        # A saved version still loads (it was valid when saved); its gate fails when it opens.
        stored = isinstance(info.context, Mapping) and info.context.get(_STORED)
        problem = self.never_approved()
        if problem and not stored:
            raise located_error("ApprovalSpec", [(("required",), problem, None)])
        return self

    def never_approved(self, requester: str | None = None) -> str | None:
        """Why no set of approvers could ever approve this gate, if none could: it needs
        more approvals than it names people who may give them (with no group to add more).
        With `requester`, the person who started the run, who may not approve it himself."""
        if self.approvers.groups:
            return None
        people = sorted(set(self.approvers.users))
        if requester in people and not self.allow_self_approval:
            people.remove(requester)
            if len(people) < self.required:
                return (
                    f"{self.required} approval{'s' if self.required > 1 else ''} needed, but of"
                    f" the approvers only {len(people)} did not start the run"
                    f" ({requester} did, and allow_self_approval is false)"
                )
            return None
        if len(people) >= self.required:
            return None
        named = f"{len(people)} approver{'s are' if len(people) > 1 else ' is'} named"
        return (
            f"{self.required} approvals needed, but only {named} ({', '.join(people)}) and no"
            " group: it could never be approved"
        )


class ApprovalStep(BaseStep):
    """Waits for people; its outputs are `approved_by` and the form's values. A step-level
    `timeout`, as on every kind, is the approval's (`approval.timeout`)."""

    kind: ClassVar[str] = "approval"
    key: ClassVar[str] = "approval"

    approval: ApprovalSpec
    timeout: Duration | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _one_timeout(self) -> ApprovalStep:
        if self.timeout is None:
            return self
        if self.approval.timeout is not None:
            raise located_error(
                "ApprovalStep",
                [(("timeout",), "give the timeout here or in approval, not both", None)],
            )
        self.approval = self.approval.model_copy(update={"timeout": self.timeout})
        return self


class GroupStep(BaseStep):
    """Runs its children in order, or all at once with `parallel: true`. With `timeout`, the
    whole group must end that long after it starts, or it ends `timed_out`."""

    kind: ClassVar[str] = "group"
    key: ClassVar[str] = "steps"

    steps: list[Step] = Field(min_length=1)
    parallel: bool = False
    timeout: Duration | None = None


_StepUnion = (
    Annotated[ShellStep, Tag(ShellStep.key)]
    | Annotated[HttpStep, Tag(HttpStep.key)]
    | Annotated[SleepStep, Tag(SleepStep.key)]
    | Annotated[ApprovalStep, Tag(ApprovalStep.key)]
    | Annotated[GroupStep, Tag(GroupStep.key)]
)
STEP_MODELS: tuple[type[BaseStep], ...] = tuple(get_args(m)[0] for m in get_args(_StepUnion))
STEP_KEYS: tuple[str, ...] = tuple(model.key for model in STEP_MODELS)
_KIND_MESSAGE = f"a step needs exactly one of {', '.join(STEP_KEYS)}"


def _step_key(value: Any) -> str | None:
    """Which kind a step is, by the one kind key it has; None makes pydantic report it."""
    if isinstance(value, BaseStep):
        return value.key
    if isinstance(value, Mapping):
        present = [key for key in STEP_KEYS if key in value]
        if len(present) == 1:
            return present[0]
    return None


Step = Annotated[
    _StepUnion,
    Discriminator(_step_key, custom_error_type="step_kind", custom_error_message=_KIND_MESSAGE),
]
GroupStep.model_rebuild()


class NumberedStep(NamedTuple):
    """A step with its outline number ("3.1"), its parent's number, and its depth (0 on top)."""

    number: str
    step: BaseStep
    parent: str | None
    depth: int


# --- The definition -------------------------------------------------------------------------


class RunbookDefinition(_Model):
    """A parsed, valid runbook definition (one version's content)."""

    slug: Slug
    name: NonBlank
    description: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    timeout: Duration | None = None
    params: list[ParamSpec] = Field(default_factory=list)
    outputs: dict[str, Template] = Field(default_factory=dict)
    steps: list[Step] = Field(min_length=1)

    @model_validator(mode="wrap")
    @classmethod
    def _check_unique_names(cls, data: Any, handler: Any) -> RunbookDefinition:
        # Uniqueness is checked on the input as given, so that a duplicate id is reported
        # together with any other problem instead of only after everything else is fixed.
        duplicates = [*_duplicate_step_ids(data), *_duplicate_param_names(data)]
        try:
            definition = handler(data)
        except ValidationError as exc:
            if not duplicates:
                raise
            raise _merge(exc, duplicates) from None
        if duplicates:
            raise located_error("RunbookDefinition", duplicates)
        return definition

    def iter_steps(self) -> Iterator[NumberedStep]:
        """Every step in outline order, numbered "1", "2", "3.1", "3.2", "4"."""
        yield from _numbered(self.steps, None, 0)

    def canonical(self) -> dict[str, Any]:
        """A JSON-compatible form without defaults, for checksums and storage.

        Parsing it gives an equal definition. Durations come out as seconds. Hash it with
        `json.dumps(..., sort_keys=True)`: mapping order is kept as written.
        """
        data = self.model_dump(mode="json", by_alias=True, exclude_defaults=True)
        # `required` depends on whether a default is given, so a `required: true` that equals
        # the field default must still be written out, or parsing it back would flip it.
        for param, dumped in zip(self.params, data.get("params", []), strict=True):
            dumped["required"] = param.required
        dumped_steps = {}

        def index(steps: list[dict[str, Any]]) -> None:
            for item in steps:
                dumped_steps[item["id"]] = item
                index(item.get("steps", []))

        index(data["steps"])
        for _, step, _, _ in self.iter_steps():
            if isinstance(step, ApprovalStep):
                dumped = dumped_steps[step.id]["approval"].get("fields", [])
                for field, dumped_field in zip(step.approval.fields, dumped, strict=True):
                    dumped_field["required"] = field.required
        return data


def _numbered(steps: list[Any], parent: str | None, depth: int) -> Iterator[NumberedStep]:
    for position, step in enumerate(steps, start=1):
        number = f"{parent}.{position}" if parent else str(position)
        yield NumberedStep(number, step, parent, depth)
        if isinstance(step, GroupStep):
            yield from _numbered(step.steps, number, depth + 1)


def _get(obj: object, key: str) -> object:
    if isinstance(obj, Mapping):
        return obj.get(key)
    return getattr(obj, key, None)


def _duplicate_step_ids(data: object) -> list[tuple[tuple[str | int, ...], str, object]]:
    first_seen: dict[str, str] = {}
    problems: list[tuple[tuple[str | int, ...], str, object]] = []

    def visit(steps: object, loc: tuple[str | int, ...]) -> None:
        if not isinstance(steps, list):
            return
        for index, step in enumerate(steps):
            # Locations carry the union tag, as pydantic's own do, so both clean up alike.
            tag = _step_key(step)
            step_loc = (*loc, index) if tag is None else (*loc, index, tag)
            step_id = _get(step, "id")
            if isinstance(step_id, str):
                if step_id in first_seen:
                    message = f"duplicate step id {step_id!r} (first used at {first_seen[step_id]})"
                    problems.append(((*step_loc, "id"), message, step_id))
                else:
                    first_seen[step_id] = _format_path(_clean_loc((*loc, index)))
            if tag == GroupStep.key:
                visit(_get(step, "steps"), (*step_loc, "steps"))

    visit(_get(data, "steps"), ("steps",))
    return problems


def _duplicate_param_names(data: object) -> list[tuple[tuple[str | int, ...], str, object]]:
    params = _get(data, "params")
    if not isinstance(params, list):
        return []
    first_seen: dict[str, int] = {}
    problems: list[tuple[tuple[str | int, ...], str, object]] = []
    for index, param in enumerate(params):
        name = _get(param, "name")
        if not isinstance(name, str):
            continue
        if name in first_seen:
            message = f"duplicate param name {name!r} (first used at params[{first_seen[name]}])"
            problems.append((("params", index, "name"), message, name))
        else:
            first_seen[name] = index
    return problems


def _merge(
    exc: ValidationError, extra: list[tuple[tuple[str | int, ...], str, object]]
) -> ValidationError:
    """One ValidationError holding pydantic's errors and ours, types and messages intact."""
    details = []
    for error in exc.errors():
        context = {
            key: value
            for key, value in (error.get("ctx") or {}).items()
            if isinstance(value, str | int | float)
        }
        context["detail"] = error["msg"]
        details.append(
            InitErrorDetails(
                type=PydanticCustomError(error["type"], "{detail}", context),
                loc=error["loc"],
                input=error.get("input"),
            )
        )
    details.extend(
        InitErrorDetails(type=_rule(message), loc=loc, input=value) for loc, message, value in extra
    )
    return ValidationError.from_exception_data(exc.title, details)


# --- Entry points ---------------------------------------------------------------------------


def parse_definition(data: object, *, stored: bool = False) -> RunbookDefinition:
    """Validate a loaded definition (a mapping, as from YAML or JSON).

    Raises DefinitionError listing every problem with its path. With `stored`, `data` is a
    saved version's: numbers over a bound are clamped to it, not refused (see
    `_clamped_when_stored`).
    """
    if data is None:
        raise DefinitionError([DefinitionIssue("", "the definition is empty")])
    if not isinstance(data, Mapping):
        raise DefinitionError(
            [DefinitionIssue("", f"a runbook definition must be a mapping, not {_a(data)}")]
        )
    try:
        return RunbookDefinition.model_validate(data, context={_STORED: stored})
    except ValidationError as exc:
        raise DefinitionError(_issues(exc)) from None


def load_definition_text(text: str) -> RunbookDefinition:
    """Parse YAML or JSON text and validate it as a definition.

    A syntax error, or a key given twice in one mapping (YAML would otherwise silently keep
    the last one), is a DefinitionError at path "" whose message says where.
    """
    data: object
    stripped = text.lstrip()
    try:
        if stripped.startswith(("{", "[")):
            try:
                data = json.loads(text, object_pairs_hook=_json_mapping)
            except json.JSONDecodeError:
                # Also valid: YAML flow style (`{slug: x, ...}`), which JSON rejects.
                data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader
        else:
            data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as exc:
        raise DefinitionError([DefinitionIssue("", _yaml_message(exc))]) from None
    except _DuplicateJsonKey as exc:
        raise DefinitionError([DefinitionIssue("", str(exc))]) from None
    except RecursionError:
        raise DefinitionError([DefinitionIssue("", "the text is nested too deeply")]) from None
    except ValueError as exc:
        # A value the loaders parse but Python cannot hold: an integer of over 4,300 digits,
        # or a YAML date that does not exist (2026-13-45). The advice after ";" is for
        # programmers (sys.set_int_max_str_digits).
        reason = str(exc).split(";")[0]
        raise DefinitionError([DefinitionIssue("", f"a value cannot be read: {reason}")]) from None
    return parse_definition(data)


class _DuplicateJsonKey(ValueError):
    pass


def _json_mapping(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateJsonKey(f"invalid JSON: duplicate key {key!r}")
        result[key] = value
    return result


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key given twice in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        # Checked before merge keys (`<<: *base`) are flattened in, since overriding a merged
        # key is what merging is for.
        seen: set[Any] = set()
        for key_node, _value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:
                continue  # an unhashable key; the base class reports it
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r}",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _yaml_message(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"invalid YAML: {exc.problem} (line {mark.line + 1}, column {mark.column + 1})"
    return f"invalid YAML: {exc}"


def _a(value: object) -> str:
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list | tuple):
        return "a list"
    return f"a {type(value).__name__}"


# --- Turning pydantic's errors into ours ----------------------------------------------------

_JSON_VALUE_TAGS = frozenset({"dict", "list", "str", "int", "float", "bool"})

_MESSAGES = {
    "missing": "required",
    "extra_forbidden": "unknown key",
    "string_type": "must be a string",
    "int_type": "must be a whole number",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "list_type": "must be a list",
    "invalid-json-value": "must be a JSON value (quote dates and times)",
}


def _issues(exc: ValidationError) -> list[DefinitionIssue]:
    issues = []
    for error in exc.errors():
        loc = _clean_loc(error["loc"])
        issues.append(DefinitionIssue(_format_path(loc), _message(error, loc)))
    return issues


def _clean_loc(loc: tuple[str | int, ...]) -> tuple[str | int, ...]:
    """Drop the elements pydantic adds for unions: the step kind tag after each step's index,
    and JsonValue's type tags inside an http step's `json`."""
    cleaned: list[str | int] = []
    parts = list(loc)
    i = 0
    in_step_list_owner = True  # the root and each step may own a `steps` list
    while i < len(parts):
        part = parts[i]
        cleaned.append(part)
        i += 1
        if part == "steps" and in_step_list_owner and i < len(parts) and isinstance(parts[i], int):
            cleaned.append(parts[i])
            i += 1
            if i < len(parts) and parts[i] in STEP_KEYS:
                i += 1  # the union tag
            in_step_list_owner = True
            continue
        if part == "json" and len(cleaned) >= 2 and cleaned[-2] == "http":
            # JsonValue alternates: a type tag, then a key or index, then a tag again.
            while i < len(parts):
                if parts[i] in _JSON_VALUE_TAGS:
                    i += 1
                if i < len(parts):
                    cleaned.append(parts[i])
                    i += 1
            break
        in_step_list_owner = False
    return tuple(cleaned)


def _format_path(loc: tuple[str | int, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part == "[key]":
            continue
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", part):
            path += f".{part}" if path else part
        else:
            path += f"[{json.dumps(part)}]"
    return path


def _message(error: Mapping[str, Any], loc: tuple[str | int, ...]) -> str:
    kind = error["type"]
    context = error.get("ctx") or {}
    if kind == "step_kind":
        return _step_kind_message(error.get("input"))
    if kind == "extra_forbidden":
        return _unknown_key_message(loc)
    message: str
    if kind in _MESSAGES:
        message = _MESSAGES[kind]
    elif kind in ("too_short", "string_too_short") and context.get("min_length") == 1:
        message = "must not be empty"
    elif kind == "greater_than_equal" and "ge" in context:
        message = f"must be at least {_number_text(context['ge'])}"
    elif kind == "less_than_equal" and "le" in context:
        message = f"must be at most {_number_text(context['le'])}"
    elif kind == "literal_error" and "expected" in context:
        message = f"must be one of {context['expected']}"
    else:
        message = str(error["msg"]).removeprefix("Value error, ")
        message = message.replace("Input should be", "must be", 1)
    if loc and loc[-1] == "[key]":
        message = f"key {message}"
    return message


def _number_text(number: object) -> str:
    if isinstance(number, float) and number.is_integer():
        return str(int(number))
    return str(number)


def _step_kind_message(value: object) -> str:
    if not isinstance(value, Mapping):
        return f"must be a mapping: {_KIND_MESSAGE}"
    present = [key for key in STEP_KEYS if key in value]
    if len(present) > 1:
        return f"{_KIND_MESSAGE}, not {' and '.join(present)} together"
    return _KIND_MESSAGE


def _unknown_key_message(loc: tuple[str | int, ...]) -> str:
    # Say where a key would be allowed, for keys that belong to other step kinds.
    if len(loc) >= 3 and isinstance(loc[-2], int) and loc[-3] == "steps":
        key = loc[-1]
        kinds = [
            model.kind
            for model in STEP_MODELS
            if any(key in (name, field.alias) for name, field in model.model_fields.items())
        ]
        if kinds:
            where = " and ".join(filter(None, [", ".join(kinds[:-1]), kinds[-1]]))
            return f"unknown key ({key} is allowed only on {where} steps)"
    return "unknown key"
