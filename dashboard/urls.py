from django.urls import path

from dashboard import views

app_name = "dashboard"
urlpatterns = [
    path("", views.overview, name="overview"),
    path("data.json", views.data, name="overview_data"),
    path("routes/", views.routes, name="routes"),
    path("routes/data.json", views.routes_json, name="routes_data"),
    path("backends/", views.backends, name="backends"),
    path("backends/data.json", views.backends_json, name="backends_data"),
    path("calls/", views.calls, name="calls"),
    path("calls/data.json", views.calls_json, name="calls_data"),
    path("calls/<int:pk>/", views.call_detail, name="call"),
    path("alerts/", views.alerts, name="alerts"),
    path("alerts/data.json", views.alerts_json, name="alerts_data"),
]
