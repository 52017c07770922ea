from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from config import views
from config.api.errors import not_found, server_error
from config.views import healthz

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("runbooks/", include("runbooks.urls")),
    path("runs/", include("runs.urls")),
    path("approvals/", include("approvals.urls")),
    path("settings/tokens/", views.token_list, name="tokens"),
    path("settings/tokens/<int:pk>/revoke", views.token_revoke_view, name="token_revoke"),
    path(
        "accounts/login/",
        auth_views.LoginView.as_view(redirect_authenticated_user=True),
        name="login",
    ),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("healthz", healthz, name="healthz"),
    path("api/v1/", include(("config.api.urls", "api"), namespace="api")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    # The split view serves Swagger UI's start-up script as a file (`?script`), not inline,
    # which the Content-Security-Policy (config/settings.py) would block.
    path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="schema"), name="api-docs"),
    re_path(r"^api/", not_found),
]

# A server error under /api/ answers the API's error body; elsewhere templates/500.html.
handler500 = server_error
