"""API-key authentication against the in-memory snapshot (no database query)."""
from __future__ import annotations

import hmac

from django.conf import settings

from proxy.errors import forbidden, unauthorized
from proxy.models import key_hash
from proxy.snapshot import KeyInfo, RouteInfo, Snapshot

MASTER = KeyInfo(id=None, name="master")


def key_authenticate(authorization: str | None, snapshot: Snapshot) -> KeyInfo:
    """Return the caller's key from `Authorization: Bearer <key>`, or raise a 401."""
    if not authorization:
        raise unauthorized(
            "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'."
        )
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise unauthorized("Malformed Authorization header; expected 'Bearer YOUR_KEY'.")
    master = settings.SLUICE_MASTER_KEY
    if master and hmac.compare_digest(token.encode(), master.encode()):
        return MASTER
    key = snapshot.keys_by_hash.get(key_hash(token))
    if key is None:
        raise unauthorized(f"Incorrect API key provided: {_masked(token)}.")
    return key


def route_permit(key: KeyInfo, route: RouteInfo) -> None:
    """A key scoped to some routes may use only those (403 otherwise)."""
    if key.routes is not None and route.name not in key.routes:
        raise forbidden(
            f"This API key may not use `{route.name}`; ask an operator to allow it.",
            param="model", code="model_not_allowed",
        )


def _masked(token: str) -> str:
    return token[:6] + "*" * 4 + token[-4:] if len(token) > 12 else "****"
