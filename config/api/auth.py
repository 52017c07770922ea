"""`Authorization: Bearer <token>`, with knox's hashed tokens and a last-used time."""

from datetime import timedelta

from django.utils import timezone
from knox.auth import TokenAuthentication

from config.models import ApiToken

LAST_USED_RESOLUTION = timedelta(minutes=1)  # at most one write a minute per token


class BearerTokenAuthentication(TokenAuthentication):
    def authenticate_credentials(self, token: bytes):  # type: ignore[override]
        user, auth_token = super().authenticate_credentials(token)
        now = timezone.now()
        last = auth_token.last_used_at
        if last is None or now - last > LAST_USED_RESOLUTION:
            ApiToken.objects.filter(pk=auth_token.pk).update(last_used_at=now)
            auth_token.last_used_at = now
        return user, auth_token
