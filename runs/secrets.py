"""Secret param values: sealed at rest, masked on the way out.

Runs need the real values while their steps execute (and again when retried), so they are
stored encrypted with a key derived from SECRET_KEY rather than thrown away; everything shown
to people (logs, API, pages, outputs) goes through `Masker`.

What an approver types into an approval's `secret` field is sealed on the run too, under
STEP_SECRETS (a key no param name can be): later steps read it as the gate's output, while
the gate's stored outputs and the decision show the mask.
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
MIN_LINE = 6  # characters of a line of a multi-line secret that is masked on its own


def _fernet() -> Fernet:
    digest = hashlib.sha256(f"stepwise-secrets:{settings.SECRET_KEY}".encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


#: Where approvers' secrets live in a run's sealed values: {step key: {field: value}}.
#: Param names match ^[a-z_][a-z0-9_]*$, so none can be this.
STEP_SECRETS = "@steps"


def seal(values: Mapping[str, object]) -> str:
    if not values:
        return ""
    return _fernet().encrypt(json.dumps(dict(values)).encode()).decode()


class SecretsUnreadable(DomainError):
    """The sealed secrets were made with another SECRET_KEY."""

    code = "conflict"
    status = 409


def unseal(token: str) -> dict[str, object]:
    """The secret params (without approvers' secrets: see `unseal_all`)."""
    values = unseal_all(token)
    values.pop(STEP_SECRETS, None)
    return values


def step_secrets(sealed: Mapping[str, object]) -> dict[str, dict[str, object]]:
    """Approvers' secrets in `unseal_all`'s result, by step key."""
    return dict(sealed.get(STEP_SECRETS) or {})  # type: ignore[call-overload]


def secret_values(sealed: Mapping[str, object]) -> list[object]:
    """Every secret value in `unseal_all`'s result: params' and approvers'."""
    values = [value for name, value in sealed.items() if name != STEP_SECRETS]
    for fields in step_secrets(sealed).values():
        values.extend(fields.values())
    return values


def unseal_all(token: str) -> dict[str, object]:
    """Everything sealed on a run: secret params by name, and STEP_SECRETS."""
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
        # A multi-line secret (a private key, a kubeconfig) is printed a line at a time, and
        # each log line holds one line of it: mask its lines too, all but the shortest, which
        # would mask every "}" or "-----" in the log.
        values |= {
            line.strip()
            for value in values
            for line in value.splitlines()
            if "\n" in value or "\r" in value
            if len(line.strip()) >= MIN_LINE
        }
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
            # Keys too: a step can name an output after a secret (`echo "$PARAM_X=1"`).
            return {self.data(key): self.data(value) for key, value in data.items()}
        if isinstance(data, list):
            return [self.data(value) for value in data]
        return data
