"""Roles are Django groups: viewer < operator < author; superusers can do everything."""

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser, Group
from rest_framework.permissions import SAFE_METHODS, BasePermission

from config.prepared import PreparedQuery

ROLES = ("viewer", "operator", "author")
GROUP_NAMES = PreparedQuery(
    lambda user_id: Group.objects.filter(user=user_id).values_list("name", flat=True),
)


def role_of(user: AbstractBaseUser | AnonymousUser) -> str | None:
    """The highest role a user holds, or None."""
    if not user.is_authenticated:
        return None
    if user.is_superuser:
        return "superuser"
    cached = getattr(user, "_stepwise_groups", None)
    if cached is None:
        cached = user._stepwise_groups = set(GROUP_NAMES(user.pk))
    names = cached
    for role in reversed(ROLES):
        if role in names:
            return role
    return None


def has_role(user: AbstractBaseUser | AnonymousUser, needed: str) -> bool:
    role = role_of(user)
    if role is None:
        return False
    if role == "superuser":
        return True
    return ROLES.index(role) >= ROLES.index(needed)


class RolePermission(BasePermission):
    """Reads need `viewer`; writes need the view's `write_role` (operator by default)."""

    def has_permission(self, request, view) -> bool:
        if request.method in SAFE_METHODS:
            return has_role(request.user, "viewer")
        return has_role(request.user, getattr(view, "write_role", "operator"))
