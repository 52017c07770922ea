"""Tokens and `/me`."""

from datetime import timedelta

from django.shortcuts import get_object_or_404
from django.utils import timezone
from django.utils.cache import add_never_cache_headers
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status, viewsets
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config.api.idempotency import IdempotentMixin
from config.api.inputs import Input
from config.api.permissions import role_of
from config.api.schema import ERRORS
from config.errors import ValidationFailed
from config.models import ApiToken
from config.services import TOKEN_MAX_DAYS, token_create, token_revoke


class TokenInput(Input):
    name = serializers.CharField(max_length=100)
    expires_in_days = serializers.IntegerField(
        min_value=1, max_value=TOKEN_MAX_DAYS, required=False
    )


class TokenOutput(serializers.ModelSerializer):
    prefix = serializers.CharField(source="token_key")
    expires_at = serializers.DateTimeField(source="expiry", allow_null=True)
    created_at = serializers.DateTimeField(source="created")

    class Meta:
        model = ApiToken
        fields = ["id", "name", "prefix", "created_at", "expires_at", "last_used_at"]


class NewTokenOutput(TokenOutput):
    token = serializers.CharField(
        allow_null=True,
        help_text=(
            "The secret, shown only this once: null when an Idempotency-Key replays the "
            "answer, since the secret is not stored."
        ),
    )

    class Meta(TokenOutput.Meta):
        fields = [*TokenOutput.Meta.fields, "token"]


def _check_outlives_no_caller(request: Request, days: int | None) -> None:
    """A token that expires makes only tokens that expire no later than it does, so that a
    short-lived token (a CI job's) cannot make itself a permanent one."""
    caller = request.auth if isinstance(request.auth, ApiToken) else None
    if caller is None or caller.expiry is None:
        return
    left = (caller.expiry - timezone.now()).days  # whole days, so never past the caller
    if days is None or days > left:
        limit = "1 day" if left == 1 else f"{left} days"
        reason = (
            f"must be at most {limit}: the token making it expires then"
            if left >= 1
            else "the token making it expires within a day, so it cannot make tokens"
        )
        raise ValidationFailed(
            "A token cannot make a token that outlives it.",
            details={"expires_in_days": [reason]},
        )


class TokenViewSet(IdempotentMixin, viewsets.GenericViewSet):
    """Your own API tokens. The secret is shown once, when the token is made."""

    permission_classes = [IsAuthenticated]
    serializer_class = TokenOutput
    not_replayed = ("token",)
    lookup_value_regex = "[0-9]+"

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation has no user
            return ApiToken.objects.none()
        return ApiToken.objects.filter(user=self.request.user).order_by("-created")

    @extend_schema(summary="List my tokens", responses={200: TokenOutput(many=True), **ERRORS})
    def list(self, request: Request) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(TokenOutput(page, many=True).data)

    @extend_schema(
        summary="Create a token", request=TokenInput, responses={201: NewTokenOutput, **ERRORS}
    )
    def create(self, request: Request) -> Response:
        data = TokenInput(data=request.data)
        data.is_valid(raise_exception=True)
        days = data.validated_data.get("expires_in_days")
        _check_outlives_no_caller(request, days)
        token, secret = token_create(
            user=request.user,
            name=data.validated_data["name"],
            expires_in=timedelta(days=days) if days else None,
        )
        token.token = secret
        response = Response(NewTokenOutput(token).data, status=status.HTTP_201_CREATED)
        add_never_cache_headers(response)  # it holds the secret
        return response

    @extend_schema(summary="Revoke a token", responses={204: None, **ERRORS})
    def destroy(self, request: Request, pk: str) -> Response:
        token_revoke(token=get_object_or_404(self.get_queryset(), pk=pk), user=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class MeOutput(serializers.Serializer):
    username = serializers.CharField()
    email = serializers.CharField()
    role = serializers.CharField(allow_null=True)
    is_superuser = serializers.BooleanField()
    auth = serializers.ChoiceField(choices=["token", "session"])


class MeView(APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(summary="Who am I", responses={200: MeOutput, **ERRORS})
    def get(self, request: Request) -> Response:
        user = request.user
        return Response(
            {
                "username": user.get_username(),
                "email": user.email,
                "role": role_of(user),
                "is_superuser": user.is_superuser,
                "auth": "token" if isinstance(request.auth, ApiToken) else "session",
            }
        )
