"""Secret param values: sealed at rest, masked on the way out.

Runs need the real values while their steps execute (and again when retried), so they are
stored encrypted with a key derived from SECRET_KEY rather than thrown away; everything shown
to people (logs, API, pages, outputs) goes through `Masker`.
"""

import base64
import hashlib
import json
from collections.abc import Iterable, Mapping
from urllib.parse import quote

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings

from config.errors import DomainError

MASK = "***"


def _fernet() -> Fernet:
    digest = hashlib.sha256(f"stepwise-secrets:{settings.SECRET_KEY}".encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def seal(values: Mapping[str, object]) -> str:
    if not values:
        return ""
    return _fernet().encrypt(json.dumps(dict(values)).encode()).decode()


class SecretsUnreadable(DomainError):
    """The sealed secrets were made with another SECRET_KEY."""

    code = "conflict"
    status = 409


def unseal(token: str) -> dict[str, object]:
    if not token:
        return {}
    try:
        return json.loads(_fernet().decrypt(token.encode()))
    except InvalidToken:
        raise SecretsUnreadable(
            "This run's secret params cannot be decrypted: SECRET_KEY changed since it started."
            " Start a new run with the secrets given again."
        ) from None


class Masker:
    """Replaces every occurrence of any secret value by ***."""

    def __init__(self, secrets: Iterable[object]) -> None:
        values = {str(value) for value in secrets if value not in (None, "")}
        # Also the forms a value takes inside URLs and JSON, where it is logged that way.
        values |= {quote(value, safe="") for value in values}
        values |= {json.dumps(value)[1:-1] for value in values}
        # Longest first, so a secret containing another is masked whole.
        self._values = sorted(values, key=len, reverse=True)

    def __bool__(self) -> bool:
        return bool(self._values)

    def text(self, text: str) -> str:
        for value in self._values:
            if value in text:
                text = text.replace(value, MASK)
        return text

    def data(self, data: object) -> object:
        """Masks strings anywhere inside a JSON-like value."""
        if not self._values:
            return data
        if isinstance(data, str):
            return self.text(data)
        if isinstance(data, dict):
            return {key: self.data(value) for key, value in data.items()}
        if isinstance(data, list):
            return [self.data(value) for value in data]
        return data
