"""Process-level endpoints: liveness (/health) and readiness (/ready) for load balancers."""
import orjson
from asgiref.sync import sync_to_async
from django.db import DatabaseError, connection
from django.http import HttpRequest, HttpResponse

from proxy.pool import backend_available, backend_state
from proxy.snapshot import snapshot_current


async def health(request: HttpRequest) -> HttpResponse:
    """Liveness: 200 while the process serves; lists what it believes of each backend."""
    snapshot = snapshot_current()
    backends = {b.name: backend_state(b).healthy for b in snapshot.backends}
    body = {"status": "ok", "config_loaded": snapshot.loaded, "backends": backends}
    return HttpResponse(orjson.dumps(body), content_type="application/json")


def _database_answers() -> str:
    """'' when the database answers a trivial query, else why not."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return ""
    except DatabaseError as exc:
        connection.close()
        return f"database unavailable: {exc}".strip()


async def ready(request: HttpRequest) -> HttpResponse:
    """Readiness: 200 only when the database answers and at least one backend may take
    traffic (probed healthy, breaker not open); 503 with the reasons otherwise."""
    snapshot = snapshot_current()
    reasons = []
    db_problem = await sync_to_async(_database_answers, thread_sensitive=False)()
    if db_problem:
        reasons.append(db_problem)
    usable = [b.name for b in snapshot.backends
              if backend_state(b).healthy and backend_available(b)]
    if not usable:
        reasons.append("no healthy backend" if snapshot.backends else "no backend configured")
    body = {"status": "not ready" if reasons else "ready", "reasons": reasons,
            "backends_available": usable}
    return HttpResponse(orjson.dumps(body), status=503 if reasons else 200,
                        content_type="application/json")
