"""`Idempotency-Key` on POSTs (DESIGN.md section 5).

The same user, key and body within 24 hours gets the first response again, with
`Idempotent-Replayed: true`, and creates nothing; another body with that key gets 422; the
same key while the first request is still being handled gets 409. A first request that
failed with a server error leaves no record, so it can be retried.
"""

import hashlib
import json
from datetime import timedelta

from django.db import IntegrityError, transaction
from django.utils import timezone
from rest_framework.request import Request
from rest_framework.response import Response

from config.errors import Conflict, DomainError
from config.models import IdempotencyRecord

RETENTION = timedelta(hours=24)
HEADER = "Idempotency-Key"


class KeyReused(DomainError):
    code = "idempotency-key-reused"
    status = 422


class _Replay(Exception):
    def __init__(self, record: IdempotencyRecord) -> None:
        self.record = record


def records_purge() -> int:
    cutoff = timezone.now() - RETENTION
    return IdempotencyRecord.objects.filter(created_at__lt=cutoff).delete()[0]


def _canonical(body: bytes) -> bytes:
    """A JSON body as its content, whatever its spacing and key order, so that a client that
    re-encodes a retry is not told it sent another request; any other body as it is."""
    try:
        return json.dumps(json.loads(body), sort_keys=True, separators=(",", ":")).encode()
    except (ValueError, RecursionError):  # not JSON (a YAML runbook), or not UTF-8
        return body


class IdempotentMixin:
    # For DRF views: replays POSTs that carry an Idempotency-Key. (A comment, not a docstring:
    # drf-spectacular would make a docstring the description of every operation of a view
    # that has none of its own.)

    #: Fields of a response that a replay answers with null, so that the database never
    #: keeps them: a secret shown once, such as a new token's.
    not_replayed: tuple[str, ...] = ()

    def initial(self, request: Request, *args, **kwargs) -> None:
        super().initial(request, *args, **kwargs)
        request.idempotency_record = None
        key = request.headers.get(HEADER)
        if request.method != "POST" or not key:
            return
        if len(key) > 255:
            raise DomainError(
                "Idempotency-Key is too long.", details={HEADER: ["at most 255 characters"]}
            )
        body_hash = hashlib.sha256(_canonical(request._request.body)).hexdigest()
        fingerprint = {"method": request.method, "path": request.path, "body_hash": body_hash}
        try:
            with transaction.atomic():
                request.idempotency_record = IdempotencyRecord.objects.create(
                    user=request.user, key=key, **fingerprint
                )
            return
        except IntegrityError:
            pass
        record = IdempotencyRecord.objects.filter(user=request.user, key=key).first()
        if record is None or record.created_at < timezone.now() - RETENTION:
            IdempotencyRecord.objects.filter(user=request.user, key=key).delete()
            with transaction.atomic():
                request.idempotency_record = IdempotencyRecord.objects.create(
                    user=request.user, key=key, **fingerprint
                )
            return
        if any(getattr(record, name) != value for name, value in fingerprint.items()):
            raise KeyReused(
                "This Idempotency-Key was used with another request in the last 24 hours.",
                details={HEADER: ["already used with a different body or path"]},
            )
        if record.status_code is None:
            raise Conflict("A request with this Idempotency-Key is still in progress.")
        raise _Replay(record)

    def handle_exception(self, exc: Exception) -> Response:
        if isinstance(exc, _Replay):
            record = exc.record
            response = Response(status=record.status_code)
            response.content = bytes(record.response_body or b"")
            response["Content-Type"] = record.content_type or "application/json"
            response["Idempotent-Replayed"] = "true"
            return response
        try:
            return super().handle_exception(exc)
        except Exception:
            # An unhandled error becomes a 500 without passing finalize_response; drop the
            # in-flight record so that a retry with the same key is not refused with 409.
            record = getattr(self.request, "idempotency_record", None)
            if record is not None:
                record.delete()
                self.request.idempotency_record = None
            raise

    def finalize_response(self, request: Request, response: Response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        record = getattr(request, "idempotency_record", None)
        if record is None:
            return response
        if response.status_code >= 500:
            record.delete()
            return response
        response.render()
        IdempotencyRecord.objects.filter(pk=record.pk).update(
            status_code=response.status_code,
            response_body=self._replay_body(response),
            content_type=response.get("Content-Type", ""),
        )
        return response

    def _replay_body(self, response: Response) -> bytes:
        """The body a replay answers with: the response's, with `not_replayed` fields null."""
        data = response.data
        hidden = [name for name in self.not_replayed if isinstance(data, dict) and name in data]
        if not hidden:
            return response.content
        return response.accepted_renderer.render(
            {**data, **dict.fromkeys(hidden)},
            response.accepted_media_type,
            response.renderer_context,
        )
