"""Domain errors: a rule said no. Views and the API map them to responses (DESIGN.md section 5)."""


class DomainError(Exception):
    code = "bad-request"
    status = 400

    def __init__(self, message: str, *, details: dict | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}


class ValidationFailed(DomainError):
    """Input was rejected; `details` maps each field (or definition path) to its messages."""

    code = "validation-failed"
    status = 400


class NotFound(DomainError):
    code = "not-found"
    status = 404


class PermissionDenied(DomainError):
    code = "permission-denied"
    status = 403


class Conflict(DomainError):
    code = "conflict"
    status = 409


class InvalidTransition(Conflict):
    """A status change lost a race or is not allowed from the current status."""

    code = "invalid-transition"
