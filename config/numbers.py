"""Whole numbers read from what clients send: query parameters, headers, cursors."""

import re

# ASCII digits only: str.isdigit() also passes superscripts, which int() refuses, and int()
# reads other scripts' digits (fullwidth, Arabic-Indic) as numbers. int() refuses more than
# 4,300 digits; more would name no row anyway.
DIGITS = re.compile(r"[0-9]{1,4300}")


def whole_number(text: str | None) -> int | None:
    """`text` as a whole number (0 or more) written in ASCII digits, or None if it is not one.
    The number may be larger than a column holds: Django's lookups take such a number as
    matching no row (`>`) or every row (`<`)."""
    if text is None or not DIGITS.fullmatch(text):
        return None
    return int(text)
