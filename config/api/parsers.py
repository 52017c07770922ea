"""Runbooks may be posted as YAML (`Content-Type: application/yaml`)."""

from rest_framework.exceptions import ParseError
from rest_framework.parsers import BaseParser


class YamlText(str):
    """The raw YAML text; the runbook service parses it so errors carry their paths."""


class YamlParser(BaseParser):
    media_type = "application/yaml"

    def parse(self, stream, media_type=None, parser_context=None) -> YamlText:
        try:
            return YamlText(stream.read().decode("utf-8"))
        except UnicodeDecodeError as error:
            raise ParseError("The YAML body is not valid UTF-8.") from error
