from django.urls import path

from runs import streams, views

app_name = "runs"

urlpatterns = [
    path("", views.run_list, name="run_list"),
    path("<int:number>/", views.run_detail, name="run_detail"),
    path("<int:number>/log", views.run_log, name="run_log"),
    path("<int:number>/log.txt", views.run_log_download, name="run_log_download"),
    path("<int:number>/log/stream", streams.run_log_stream, name="run_log_stream"),
    path("<int:number>/cancel", views.run_cancel, name="run_cancel"),
    path("<int:number>/retry", views.run_retry, name="run_retry"),
    path("<int:number>/retry/edit", views.run_retry_edit, name="run_retry_edit"),
    path("artifacts/<int:pk>/download", views.artifact_download, name="artifact_download"),
]
