"""The run form, generated from a runbook version's params.

The form only parses what the browser sent: every rule (required, ranges, patterns, choices)
is checked by `runs.services.run_create`, the one path the API and CLI use too, and its
messages are put beside the fields they name. What only a form has is checked here: a secret
param is typed twice, since a person cannot see what they typed.
"""

import json
from collections.abc import Mapping, Sequence
from typing import Any

from django import forms

from runbooks.params import ParamSpec


def _initial(spec: ParamSpec, value: Any) -> Any:
    """A param value (its default, or a run's) as its field shows it."""
    if value is None:
        return None
    if spec.type == "json":
        return json.dumps(value, indent=2)
    if spec.type == "multichoice":
        return [str(v) for v in value]
    if spec.type == "datetime":
        return str(value)[:16]
    if spec.type == "secret":
        return None  # a secret is never sent to the browser
    if spec.type in ("integer", "number", "date", "choice"):
        return str(value)  # as the browser sends it back, so an untouched field is unchanged
    return value


def _field(spec: ParamSpec) -> forms.Field:
    attrs: dict[str, Any] = {}
    choices = [(str(choice), str(choice)) for choice in spec.choices or []]
    widget: forms.Widget
    if spec.type == "text":
        widget = forms.Textarea(attrs={"rows": 4})
    elif spec.type == "json":
        widget = forms.Textarea(attrs={"rows": 5, "class": "mono", "spellcheck": "false"})
    elif spec.type in ("integer", "number"):
        attrs["step"] = "1" if spec.type == "integer" else "any"
        if spec.min is not None:
            attrs["min"] = spec.min
        if spec.max is not None:
            attrs["max"] = spec.max
        widget = forms.NumberInput(attrs=attrs)
    elif spec.type == "boolean":
        return forms.BooleanField(
            required=False, label=spec.display_label, help_text=spec.description or ""
        )
    elif spec.type == "choice":
        blank = [] if spec.default is not None and spec.required else [("", "—")]
        widget = forms.Select(choices=blank + choices)
    elif spec.type == "multichoice":
        widget = forms.CheckboxSelectMultiple(choices=choices)
    elif spec.type == "date":
        widget = forms.DateInput(attrs={"type": "date"})
    elif spec.type == "datetime":
        widget = forms.DateTimeInput(attrs={"type": "datetime-local"})
    elif spec.type == "secret":
        widget = forms.PasswordInput(attrs={"autocomplete": "off"})
    else:
        widget = forms.TextInput(attrs=attrs)
    return forms.Field(
        required=False, label=spec.display_label, help_text=spec.description or "", widget=widget
    )


def again(name: str) -> str:
    """The confirmation field of secret param `name` ("-" is in no param name)."""
    return f"{name}-again"


class RunForm(forms.Form):
    """One field per param, named after it, and after each secret its confirmation;
    `params()` gives what run_create expects.

    `values` fills the fields with a run's params instead of the defaults (a retry with
    changes); `edited()` then gives the params the user changed."""

    def __init__(
        self,
        specs: Sequence[ParamSpec],
        *args: Any,
        values: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.specs = list(specs)
        for spec in self.specs:
            field = _field(spec)
            field.initial = _initial(
                spec, values[spec.name] if values and spec.name in values else spec.default
            )
            field.param_type = spec.type
            field.param_required = spec.required and spec.default is None
            field.param_pattern = spec.pattern
            self.fields[spec.name] = field
            if spec.type == "secret":
                confirm = forms.Field(
                    required=False,
                    label="Type it again",
                    widget=forms.PasswordInput(attrs={"autocomplete": "off"}),
                )
                confirm.param_type = spec.type
                confirm.param_required = field.param_required
                self.fields[again(spec.name)] = confirm

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        for spec in self.specs:
            if spec.type == "secret" and (cleaned.get(spec.name) or "") != (
                cleaned.get(again(spec.name)) or ""
            ):
                self.add_error(again(spec.name), "does not match the value above; type both again")
        return cleaned

    def params(self) -> dict[str, Any]:
        values = {spec.name: self.cleaned_data.get(spec.name) for spec in self.specs}
        for spec in self.specs:
            # A textarea's lines come back from the browser ending in CRLF, as HTML says:
            # a script would get a \r at the end of each.
            if spec.type in ("text", "json") and isinstance(values[spec.name], str):
                values[spec.name] = values[spec.name].replace("\r\n", "\n")
        return values

    def edited(self) -> dict[str, Any]:
        """The params whose fields now differ from what they were filled with. An empty
        secret field is not an edit: the secret keeps its value."""
        edited = {}
        for name, value in self.params().items():
            field = self.fields[name]
            blank = value in (None, "", [])
            if field.param_type == "secret" and blank:
                continue
            if not (blank and field.initial in (None, "", [])) and value != field.initial:
                edited[name] = value
        return edited

    def add_service_errors(self, details: Mapping[str, list[str]]) -> None:
        """Puts ValidationFailed details (`params.<name>`) beside their fields."""
        for key, messages in details.items():
            name = key.removeprefix("params.")
            for message in messages:
                if name in self.fields:
                    self.add_error(name, message)
                else:
                    self.add_error(None, f"{name}: {message}")
