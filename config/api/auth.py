"""`Authorization: Bearer <token>`, with knox's hashed tokens and a last-used time."""

from datetime import timedelta

from django.http import HttpRequest
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from knox.auth import TokenAuthentication
from knox.crypto import hash_token
from rest_framework import exceptions
from rest_framework.throttling import BaseThrottle

from config.models import ApiToken
from config.prepared import PreparedQuery

LAST_USED_RESOLUTION = timedelta(minutes=1)  # at most one write a minute per token
TOKEN_BY_DIGEST = PreparedQuery(
    lambda digest: ApiToken.objects.select_related("user").filter(digest=digest),
    probe="prepared-query-probe",
)


class BearerTokenAuthentication(TokenAuthentication):
    def authenticate_credentials(self, token: bytes):  # type: ignore[override]
        """One indexed read per request, where knox makes two.

        knox finds candidates by the token's 8-character prefix, then reads every token of
        the user to delete expired ones. Our digest column is unique, so the token's sha512
        digest finds its row directly; expired tokens are refused here and stay listed (as
        expired) on the tokens page until their owner deletes them.
        """
        try:
            digest = hash_token(token.decode("utf-8"))
        except (UnicodeDecodeError, TypeError, ValueError):
            raise exceptions.AuthenticationFailed(_("Invalid token.")) from None
        auth_token = next(iter(TOKEN_BY_DIGEST(digest)), None)
        now = timezone.now()
        if auth_token is None or (auth_token.expiry is not None and auth_token.expiry < now):
            raise exceptions.AuthenticationFailed(_("Invalid token."))
        user, auth_token = self.validate_user(auth_token)
        last = auth_token.last_used_at
        if last is None or now - last > LAST_USED_RESOLUTION:
            ApiToken.objects.filter(pk=auth_token.pk).update(last_used_at=now)
            auth_token.last_used_at = now
        return user, auth_token


def client_address(request: HttpRequest) -> str | None:
    """The client's address as API throttling sees it (DRF's NUM_PROXIES), for the sign-in
    lockout too: one answer to "who is this?" for both."""
    return BaseThrottle().get_ident(request) or None
