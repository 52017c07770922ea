from django.apps import AppConfig


class CoreConfig(AppConfig):
    """Cross-cutting pieces: API tokens, idempotency records, roles, the API's plumbing."""

    name = "config"
    label = "core"
    verbose_name = "Access"
