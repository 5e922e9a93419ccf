from django.contrib import admin
from django.contrib.staticfiles.views import serve as static_serve
from django.http import HttpResponse
from django.urls import include, path, re_path

from config.api import api
from config.metrics import metrics
from config.views import health, ready
from proxy import api as proxy_api

urlpatterns = [
    path("v1/", include("proxy.urls")),
    path("api/", api.urls),
    path("dashboard/", include("dashboard.urls")),
    path("admin/", admin.site.urls),
    path("health", health),
    path("ready", ready),
    path("metrics", metrics),  # Prometheus; full middleware stack (staff sessions)
    # Pages that do not declare an icon (the admin's) make browsers ask for this one: an empty
    # answer rather than a 404 in every console.
    path("favicon.ico", lambda request: HttpResponse(status=204,
                                                     headers={"Cache-Control": "max-age=86400"})),
    # vLLM serves these outside /v1.
    path("tokenize", proxy_api.tokenize),
    path("detokenize", proxy_api.detokenize),
    # The embedded default serves its own static files (admin CSS, plotly.js); behind nginx,
    # run collectstatic and let nginx serve STATIC_ROOT instead.
    re_path(r"^static/(?P<path>.*)$", static_serve, {"insecure": True}),
]
