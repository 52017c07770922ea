"""Request bodies: JSON everywhere, and runbooks may be posted as YAML
(`Content-Type: application/yaml`)."""

from rest_framework.exceptions import ParseError
from rest_framework.parsers import BaseParser, JSONParser


class YamlText(str):
    """The raw YAML text; the runbook service parses it so errors carry their paths."""


class YamlParser(BaseParser):
    media_type = "application/yaml"

    def parse(self, stream, media_type=None, parser_context=None) -> YamlText:
        try:
            return YamlText(stream.read().decode("utf-8"))
        except UnicodeDecodeError as error:
            raise ParseError("The YAML body is not valid UTF-8.") from error


class JsonParser(JSONParser):
    """DRF's JSON parser, with a nesting too deep for Python's decoder (`[[[[...`, a few
    bytes a level) a 400 instead of a RecursionError and a 500."""

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - the body is nested too deeply.") from None
