"""Settings of the server the browser tests talk to: the product's, plus the fast password
hasher the tests make their users with (tests/conftest.py)."""

from config.settings import *  # noqa: F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
