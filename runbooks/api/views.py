"""The runbooks API: list, create and update from JSON or YAML, archive, versions."""

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from config.api.idempotency import IdempotentMixin
from config.api.parsers import JsonParser, YamlParser, YamlText
from config.api.permissions import RolePermission
from config.api.schema import ERRORS
from config.errors import NotFound, ValidationFailed
from runbooks.filters import RunbookFilter
from runbooks.models import Runbook, RunbookVersion
from runbooks.schema import RunbookDefinition
from runbooks.services import (
    definition_parse,
    runbook_archive,
    runbook_create,
    runbook_save,
    version_definition,
)


class VersionOutput(serializers.ModelSerializer):
    created_by = serializers.SerializerMethodField()

    class Meta:
        model = RunbookVersion
        fields = ["number", "checksum", "created_at", "created_by"]

    def get_created_by(self, version: RunbookVersion) -> str | None:
        return version.created_by.get_username() if version.created_by else None


class RunbookOutput(serializers.ModelSerializer):
    version = serializers.IntegerField(source="latest_version.number", allow_null=True)
    archived = serializers.BooleanField(source="is_archived")

    class Meta:
        model = Runbook
        fields = [
            "slug",
            "name",
            "description",
            "labels",
            "version",
            "archived",
            "created_at",
            "updated_at",
        ]


class RunbookDetailOutput(RunbookOutput):
    definition = serializers.JSONField(source="latest_version.definition", allow_null=True)
    params = serializers.SerializerMethodField()

    class Meta(RunbookOutput.Meta):
        fields = [*RunbookOutput.Meta.fields, "definition", "params"]

    def get_params(self, runbook: Runbook) -> list[dict[str, Any]]:
        if runbook.latest_version is None:
            return []
        definition = version_definition(runbook.latest_version)
        return [param.model_dump(mode="json", exclude_none=True) for param in definition.params]


# The definition as JSON is described by its pydantic model (config.api.schema.PydanticBody);
# as YAML it is the text of a runbook file.
DEFINITION_BODY = {"application/json": RunbookDefinition, "application/yaml": OpenApiTypes.STR}


def _definition(request: Request) -> tuple[RunbookDefinition, str]:
    if isinstance(request.data, YamlText):
        return definition_parse(text=request.data), str(request.data)
    if not isinstance(request.data, dict):
        raise ValidationFailed(
            "The body must be a runbook definition.", details={"body": ["must be an object"]}
        )
    return definition_parse(data=request.data), ""


class RunbookViewSet(IdempotentMixin, viewsets.GenericViewSet):
    permission_classes = [RolePermission]
    write_role = "author"
    parser_classes = [JsonParser, YamlParser]  # only runbooks are written in YAML
    lookup_field = "slug"
    filterset_class = RunbookFilter
    serializer_class = RunbookOutput

    def get_queryset(self) -> QuerySet[Runbook]:
        runbooks = Runbook.objects.select_related("latest_version").order_by("slug")
        # Active ones only, unless the list asks by `archived` (RunbookFilter narrows it then).
        return runbooks if self.request.query_params.get("archived") else runbooks.active()

    def _get(self, slug: str) -> Runbook:
        runbook = Runbook.objects.select_related("latest_version").filter(slug=slug).first()
        if runbook is None:
            raise NotFound(f"There is no runbook {slug!r}.")
        return runbook

    @extend_schema(summary="List runbooks", responses={200: RunbookOutput(many=True), **ERRORS})
    def list(self, request: Request) -> Response:
        page = self.paginate_queryset(self.filter_queryset(self.get_queryset()))
        return self.get_paginated_response(RunbookOutput(page, many=True).data)

    @extend_schema(summary="Get a runbook", responses={200: RunbookDetailOutput, **ERRORS})
    def retrieve(self, request: Request, slug: str) -> Response:
        return Response(RunbookDetailOutput(self._get(slug)).data)

    @extend_schema(
        summary="Create a runbook",
        request=DEFINITION_BODY,
        responses={201: RunbookDetailOutput, 200: RunbookDetailOutput, **ERRORS},
    )
    def create(self, request: Request) -> Response:
        definition, source = _definition(request)
        result = runbook_create(definition=definition, source=source, user=request.user)
        return Response(RunbookDetailOutput(result.runbook).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        summary="Update a runbook (a new version)",
        request=DEFINITION_BODY,
        responses={200: RunbookDetailOutput, **ERRORS},
    )
    def update(self, request: Request, slug: str) -> Response:
        self._get(slug)
        definition, source = _definition(request)
        result = runbook_save(
            definition=definition, source=source, user=request.user, expected_slug=slug
        )
        return Response(RunbookDetailOutput(result.runbook).data)

    @extend_schema(summary="Archive a runbook", responses={204: None, **ERRORS})
    def destroy(self, request: Request, slug: str) -> Response:
        runbook_archive(runbook=self._get(slug), user=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(summary="Version history", responses={200: VersionOutput(many=True), **ERRORS})
    @action(detail=True, methods=["get"], filter_backends=[])
    def versions(self, request: Request, slug: str) -> Response:
        versions = self._get(slug).versions.select_related("created_by").order_by("-number")
        page = self.paginate_queryset(versions)
        return self.get_paginated_response(VersionOutput(page, many=True).data)
