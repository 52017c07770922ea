"""The approvals API: my inbox, an approval, approve, deny."""

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, viewsets
from rest_framework.decorators import action
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response

from approvals.models import Approval, Decision
from approvals.services import MAX_COMMENT, approval_decide
from approvals.state import ApprovalStatus
from config.api.filtering import BOOLEANS
from config.api.idempotency import IdempotentMixin
from config.api.inputs import Input
from config.api.permissions import has_role
from config.api.schema import ERRORS
from config.errors import NotFound, ValidationFailed


class DecisionOutput(serializers.ModelSerializer):
    user = serializers.CharField(source="user.username")

    class Meta:
        model = Decision
        fields = ["user", "verdict", "comment", "values", "origin", "created_at"]


class ApprovalOutput(serializers.ModelSerializer):
    run = serializers.IntegerField(source="run_id")
    step = serializers.CharField(source="step.number")
    step_id = serializers.CharField(source="step.key")
    approvers = serializers.SerializerMethodField()
    approvals = serializers.SerializerMethodField()
    decisions = DecisionOutput(many=True)
    can_decide = serializers.SerializerMethodField()
    url = serializers.SerializerMethodField()

    class Meta:
        model = Approval
        fields = [
            "id",
            "run",
            "step",
            "step_id",
            "status",
            "message",
            "approvers",
            "required",
            "approvals",
            "allow_self_approval",
            "fields",
            "decisions",
            "can_decide",
            "opened_at",
            "expires_at",
            "closed_at",
            "url",
        ]

    def get_approvers(self, approval: Approval) -> dict[str, list[str]]:
        return {"users": approval.approver_users, "groups": approval.approver_groups}

    def get_approvals(self, approval: Approval) -> int:
        return sum(d.verdict == Decision.Verdict.APPROVE for d in approval.decisions.all())

    def get_can_decide(self, approval: Approval) -> bool:
        user = self.context["request"].user
        return (
            approval.is_open
            and approval.names(user)
            and (approval.allow_self_approval or approval.requested_by_id != user.pk)
            and all(d.user_id != user.pk for d in approval.decisions.all())
        )

    def get_url(self, approval: Approval) -> str:
        return self.context["request"].build_absolute_uri(f"/approvals/{approval.pk}/")


class ApproveInput(Input):
    comment = serializers.CharField(
        required=False, allow_blank=True, default="", max_length=MAX_COMMENT
    )
    values = serializers.DictField(required=False, default=dict)


class DenyInput(Input):
    reason = serializers.CharField(max_length=MAX_COMMENT)


class ApprovalViewSet(IdempotentMixin, viewsets.GenericViewSet):
    """Anyone with a role sees every approval; an approver without one sees theirs."""

    permission_classes = [IsAuthenticated]
    serializer_class = ApprovalOutput
    lookup_value_regex = "[0-9]+"

    def get_queryset(self) -> QuerySet[Approval]:
        if getattr(self, "swagger_fake_view", False):
            return Approval.objects.none()
        approvals = Approval.objects.select_related("step", "run").prefetch_related(
            "decisions__user"
        )
        user = self.request.user
        if not has_role(user, "viewer"):
            approvals = approvals.decidable_by(user)
        return approvals.order_by("-opened_at", "-pk")

    def _get(self, pk: Any) -> Approval:
        approval = self.get_queryset().filter(pk=pk).first()
        if approval is None:
            raise NotFound(f"There is no approval {pk}.")
        return approval

    @extend_schema(
        summary="List approvals",
        parameters=[
            OpenApiParameter("status", str, enum=ApprovalStatus.values),
            OpenApiParameter("mine", bool, description="Only approvals I may decide."),
        ],
        responses={200: ApprovalOutput(many=True), **ERRORS},
    )
    def list(self, request: Request) -> Response:
        approvals = self.get_queryset()
        errors: dict[str, list[str]] = {}
        status = request.query_params.get("status")
        if status and status not in ApprovalStatus.values:
            errors["status"] = [f"one of {', '.join(ApprovalStatus.values)}"]
        elif status:
            approvals = approvals.filter(status=status)
        mine = request.query_params.get("mine", "").lower()
        if mine and mine not in BOOLEANS:
            errors["mine"] = ["true or false"]
        elif BOOLEANS.get(mine):
            approvals = approvals.decidable_by(request.user)
        if errors:
            raise ValidationFailed("Some query parameters are not valid.", details=errors)
        page = self.paginate_queryset(approvals)
        return self.get_paginated_response(
            ApprovalOutput(page, many=True, context={"request": request}).data
        )

    @extend_schema(summary="Get an approval", responses={200: ApprovalOutput, **ERRORS})
    def retrieve(self, request: Request, pk: str) -> Response:
        return Response(ApprovalOutput(self._get(pk), context={"request": request}).data)

    @extend_schema(
        summary="Approve", request=ApproveInput, responses={200: ApprovalOutput, **ERRORS}
    )
    @action(detail=True, methods=["post"])
    def approve(self, request: Request, pk: str) -> Response:
        data = ApproveInput(data=request.data)
        data.is_valid(raise_exception=True)
        approval = approval_decide(
            approval=self._get(pk),
            user=request.user,
            approve=True,
            comment=data.validated_data["comment"],
            values=data.validated_data["values"],
            origin="api",
        )
        return Response(ApprovalOutput(self._get(approval.pk), context={"request": request}).data)

    @extend_schema(summary="Deny", request=DenyInput, responses={200: ApprovalOutput, **ERRORS})
    @action(detail=True, methods=["post"])
    def deny(self, request: Request, pk: str) -> Response:
        data = DenyInput(data=request.data)
        data.is_valid(raise_exception=True)
        approval = approval_decide(
            approval=self._get(pk),
            user=request.user,
            approve=False,
            comment=data.validated_data["reason"],
            origin="api",
        )
        return Response(ApprovalOutput(self._get(approval.pk), context={"request": request}).data)
