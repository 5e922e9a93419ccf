"""Process-level endpoints."""
import orjson
from django.http import HttpRequest, HttpResponse

from proxy.pool import backend_state
from proxy.snapshot import snapshot_current


async def health(request: HttpRequest) -> HttpResponse:
    """200 while the process serves; lists what it believes of each backend."""
    snapshot = snapshot_current()
    backends = {b.name: backend_state(b).healthy for b in snapshot.backends}
    body = {"status": "ok", "config_loaded": snapshot.loaded, "backends": backends}
    return HttpResponse(orjson.dumps(body), content_type="application/json")
