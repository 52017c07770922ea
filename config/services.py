"""Writes to API tokens."""

from datetime import timedelta

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction

from config.errors import PermissionDenied
from config.models import ApiToken

#: The longest a token may be made to last (ten years). Longer is "never", which is said by
#: giving no expiry; a bound also keeps now + days inside what datetime can hold.
TOKEN_MAX_DAYS = 3650


@transaction.atomic
def token_create(
    *, user: AbstractBaseUser, name: str, expires_in: timedelta | None = None
) -> tuple[ApiToken, str]:
    """Makes a token; returns it and its secret, which is stored only as a hash."""
    return ApiToken.objects.create(user=user, name=name, expiry=expires_in)


@transaction.atomic
def token_revoke(*, token: ApiToken, user: AbstractBaseUser) -> None:
    if token.user_id != user.pk:
        raise PermissionDenied("You can revoke only your own tokens.")
    token.delete()
