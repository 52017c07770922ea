from django.urls import path

from approvals import views

app_name = "approvals"

urlpatterns = [
    path("", views.approval_list, name="approval_list"),
    path("<int:pk>/", views.approval_detail, name="approval_detail"),
    path("<int:pk>/decide", views.approval_decision, name="approval_decide"),
]
