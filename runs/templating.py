"""Jinja2 templating of step definitions, safe by construction.

Every template renders in an immutable sandbox with strict undefined. Where a value lands
decides how it is encoded, through Jinja's `finalize` hook, which sees every `{{ ... }}` result:
shell scripts quote each value as one literal word, URLs percent-encode it. A parameter can
therefore never become shell syntax or change a URL's structure, whatever it contains.
"""

import json
import re
import shlex
from collections.abc import Callable, Mapping
from functools import cache, lru_cache
from typing import Any
from urllib.parse import quote

from jinja2 import StrictUndefined, Template, TemplateError, pass_context
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment
from markupsafe import Markup

from runs import shell_template

_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?")
_SINGLE_EXPRESSION = re.compile(r"^\s*\{\{(.*)\}\}\s*$", re.DOTALL)


class RenderError(Exception):
    """A template or expression failed; the message says where and why."""


def to_text(value: object) -> str:
    """The text form of a value, as shell scripts and environment variables see it."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


class _ShellText(str):
    """Script text made by the `stepwise_shell` filter: already safe where it stands."""


def _shell_finalize(value: object) -> str:
    if isinstance(value, _ShellText):
        return value
    # Every `{{ }}` goes through stepwise_shell (runs.shell_template); quoting is the
    # fallback should the rewrite ever miss one.
    return shlex.quote(to_text(value).replace("\x00", ""))


@pass_context
def _stepwise_shell(
    context: Context, value: object, where: str, delimiter: str | None = None
) -> _ShellText:
    text = to_text(value).replace("\x00", "")
    if where == "heredoc":
        # Nothing expands in a quoted heredoc, so the value goes in as it is, unless one of
        # its lines would end the heredoc early and turn the rest into commands.
        if any(line.strip("\t") == delimiter for line in text.split("\n")):
            raise RenderError(f"a value contains the line {delimiter!r}, which ends its heredoc")
        return _ShellText(text)
    if where in shell_template.ARITHMETIC:
        if not _NUMBER.fullmatch(text):
            raise RenderError(
                "only a number can go where bash evaluates arithmetic ($(( )), [[ -eq ]],"
                f" ${{array[i]}}, array[i]=, ${{s:offset}}, let, an integer's value), not {text!r}"
            )
        return _ShellText(text)
    variables: dict[str, str] = context["__stepwise_vars__"]
    name = f"STEPWISE_V{len(variables) + 1}"
    variables[name] = text
    return _ShellText(shell_template.REFERENCE[where].format(name=name))


def _url_encode(value: object) -> str:
    # `{{ params.base_url | safe }}` is the one way to insert a value into a URL as written
    # (a base URL the runbook's author chose to make a param). Shell scripts have no such
    # escape hatch: there a value is always one literal word.
    if isinstance(value, Markup):
        return str(value)
    return quote(to_text(value), safe="")


# The largest string or list a template may make by repetition, and the largest power (in
# bits) it may compute: `'a' * 10**10` would exhaust a worker's memory, and `10 ** 10 ** 10`
# holds the interpreter for hours with no chance to notice a timeout or renew the lease.
MAX_REPEAT = 1_000_000
MAX_POWER_BITS = 64_000


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class _Environment(ImmutableSandboxedEnvironment):
    """`steps.x.outputs.items` means the output named items, not the dict method."""

    intercepted_binops = frozenset({"*", "**"})

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, Mapping) and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if (
            operator == "**"
            and _whole(left)
            and _whole(right)
            and abs(left).bit_length() * right > MAX_POWER_BITS
        ):
            raise SecurityError(f"{left} ** {right} is too large a number")
        if operator == "*":
            for items, times in ((left, right), (right, left)):
                if (
                    isinstance(items, str | list | tuple)
                    and _whole(times)
                    and len(items) * times > MAX_REPEAT
                ):
                    raise SecurityError(
                        f"repeating {len(items)} items {times} times makes more than {MAX_REPEAT:,}"
                    )
        return super().call_binop(context, operator, left, right)


@cache
def _environment(mode: str) -> ImmutableSandboxedEnvironment:
    finalize: Callable[[Any], Any] = {
        "shell": _shell_finalize,
        "url": _url_encode,
        "text": to_text,
    }[mode]
    environment = _Environment(
        undefined=StrictUndefined,
        finalize=finalize,
        autoescape=False,
        keep_trailing_newline=True,
    )
    if mode == "shell":
        environment.filters["stepwise_shell"] = _stepwise_shell
    return environment


def _describe(error: Exception) -> str:
    line = getattr(error, "lineno", None)
    where = f" (line {line})" if line else ""
    return f"{type(error).__name__}: {error}{where}"


_ERRORS = (TemplateError, ArithmeticError, TypeError, ValueError, LookupError)


@lru_cache(maxsize=1024)
def _compiled(template: str, mode: str) -> Template:
    # Definitions are immutable and a step renders the same templates at every attempt and
    # in every run: compiling once saves 0.2-0.5 ms a step. Syntax errors are not cached.
    if mode == "shell":
        return _environment(mode).from_string(shell_template.rewrite(template))
    return _environment(mode).from_string(template)


def render(template: str, context: Mapping[str, Any], *, mode: str = "text") -> str:
    """Renders `template`; mode is "url" or "text" (shell scripts use `render_shell`)."""
    try:
        return _compiled(template, mode).render(context)
    except _ERRORS as error:
        raise RenderError(_describe(error)) from error


def render_shell(template: str, context: Mapping[str, Any]) -> tuple[str, dict[str, str]]:
    """Renders a shell script; returns it with the variables its values travel in."""
    variables: dict[str, str] = {}
    try:
        script = _compiled(template, "shell").render({**context, "__stepwise_vars__": variables})
    except _ERRORS as error:
        raise RenderError(_describe(error)) from error
    return script, variables


def evaluate(expression: str, context: Mapping[str, Any]) -> Any:
    """Evaluates a bare expression, as `if:` conditions are written."""
    try:
        compiled = _environment("text").compile_expression(expression, undefined_to_none=False)
        result = compiled(**context)
    except (TemplateError, ArithmeticError, TypeError, ValueError, LookupError) as error:
        raise RenderError(_describe(error)) from error
    if isinstance(result, StrictUndefined):
        # Touching it raises the UndefinedError with the missing name.
        try:
            bool(result)
        except TemplateError as error:
            raise RenderError(_describe(error)) from error
    return result


def render_value(value: Any, context: Mapping[str, Any]) -> Any:
    """Renders a JSON value: a string that is exactly one `{{ expr }}` keeps the value's type."""
    if isinstance(value, str):
        match = _SINGLE_EXPRESSION.match(value)
        if match and "{{" not in match.group(1) and "}}" not in match.group(1):
            return evaluate(match.group(1), context)
        return render(value, context)
    if isinstance(value, dict):
        return {key: render_value(item, context) for key, item in value.items()}
    if isinstance(value, list):
        return [render_value(item, context) for item in value]
    return value
