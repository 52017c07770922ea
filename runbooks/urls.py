from django.urls import path

from runbooks import views

app_name = "runbooks"

urlpatterns = [
    path("", views.runbook_list, name="runbook_list"),
    path("<slug:slug>/", views.runbook_detail, name="runbook_detail"),
    path("<slug:slug>/run", views.runbook_run, name="runbook_run"),
    path("<slug:slug>/diff", views.runbook_diff, name="runbook_diff"),
]
