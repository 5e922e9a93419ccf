"""The one NinjaAPI of the ops API, mounted at /api/ (docs at /api/docs).

Callers authenticate with the master key as a bearer token, or with a staff session (the
dashboard's own requests)."""
from __future__ import annotations

import hmac

from django.conf import settings
from ninja import NinjaAPI
from ninja.security import HttpBearer

from analytics.api import router as analytics_router
from proxy.ops_api import router as pool_router


class AdminToken(HttpBearer):
    def authenticate(self, request, token: str):
        master = settings.SLUICE_MASTER_KEY
        if master and hmac.compare_digest(token.encode(), master.encode()):
            return "master"
        return None


def staff_session(request):
    user = request.user
    return user if user.is_authenticated and user.is_staff else None


api = NinjaAPI(
    title="Sluice ops API",
    version="1",
    auth=[AdminToken(), staff_session],
    urls_namespace="api",
)
api.add_router("/", analytics_router)
api.add_router("/", pool_router)
