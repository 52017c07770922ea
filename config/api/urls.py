from django.urls import path
from rest_framework.routers import DefaultRouter

from approvals.api.views import ApprovalViewSet
from config.api.views import MeView, TokenViewSet
from runbooks.api.views import RunbookViewSet
from runs.api.views import ArtifactDownloadView, RunViewSet, StatsView

router = DefaultRouter(trailing_slash=False)
router.include_root_view = False
router.register("runbooks", RunbookViewSet, basename="runbook")
router.register("runs", RunViewSet, basename="run")
router.register("tokens", TokenViewSet, basename="token")
router.register("approvals", ApprovalViewSet, basename="approval")

urlpatterns = [
    path("me", MeView.as_view(), name="me"),
    path("stats/runs", StatsView.as_view(), name="stats-runs"),
    path("artifacts/<int:pk>/download", ArtifactDownloadView.as_view(), name="artifact-download"),
    *router.urls,
]
