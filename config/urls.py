from django.contrib import admin
from django.contrib.staticfiles.views import serve as static_serve
from django.urls import include, path, re_path

from config.api import api
from config.views import health

urlpatterns = [
    path("v1/", include("proxy.urls")),
    path("api/", api.urls),
    path("dashboard/", include("dashboard.urls")),
    path("admin/", admin.site.urls),
    path("health", health),
    # The embedded default serves its own static files (admin CSS, plotly.js); behind nginx,
    # run collectstatic and let nginx serve STATIC_ROOT instead.
    re_path(r"^static/(?P<path>.*)$", static_serve, {"insecure": True}),
]
