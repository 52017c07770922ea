"""Request bodies that name only what an endpoint takes."""

from collections.abc import Mapping
from typing import Any

from rest_framework import serializers


class Input(serializers.Serializer):
    # A request body whose keys must all be fields of it. DRF drops a key it does not know,
    # so a misspelt `parms` would start a run with the default parameters; here it is a
    # validation error naming the key, as an unknown key in a runbook definition is. (A
    # comment: drf-spectacular would make a docstring the description of every subclass.)

    def to_internal_value(self, data: Any) -> Any:
        unknown = {}
        if isinstance(data, Mapping):
            accepted = [name for name, field in self.fields.items() if not field.read_only]
            message = f"unknown field; this endpoint takes {', '.join(accepted)}"
            unknown = {str(key): [message] for key in data if key not in accepted}
        try:
            value = super().to_internal_value(data)
        except serializers.ValidationError as error:
            if isinstance(error.detail, dict):
                error.detail.update(unknown)
            raise
        if unknown:
            raise serializers.ValidationError(unknown)
        return value
