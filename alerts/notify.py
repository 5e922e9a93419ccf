"""The alerts app's outbound I/O, all of it: the log line and webhook POST of an event, and the
backends' /health GETs of the 'backends down' metric.

Short timeouts everywhere, and nothing here raises into the evaluator: a webhook that is down,
slow or answers garbage costs its attempts and is recorded as failed on its event. A failure
carries whether it is worth retrying (healthchecks' transports): connection errors, timeouts,
408, 429 and 5xx are; any other answer is final. Retries back off exponentially (tenacity).
"""
from __future__ import annotations

import json
import logging
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from alerts.models import AlertEvent, EventKind

logger = logging.getLogger("sluice.alerts")

ALERTS_PATH = "/dashboard/alerts/"
HEALTH_TIMEOUT_S = 2.0  # as the web processes' own probes (proxy.upstream.upstream_health)
_RETRY_STATUS = {408, 429}
# Backends sit on the pool's private network: no HTTP(S)_PROXY from the environment for them,
# as aiohttp ignores it for the web processes' probes. Webhooks go out through it.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class WebhookError(Exception):
    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True, slots=True)
class Delivery:
    ok: bool
    attempts: int
    error: str = ""


def event_notify(event: AlertEvent) -> Delivery | None:
    """Log the event (a warning when it fires, info when it resolves) and POST it to its rule's
    webhook or SLUICE_ALERT_WEBHOOK_URL; None when neither is set."""
    payload = event_payload(event)
    log = logger.warning if event.kind == EventKind.FIRED else logger.info
    log("%s", payload["text"])
    url = event.rule.webhook_url or settings.SLUICE_ALERT_WEBHOOK_URL
    return webhook_post(url, payload) if url else None


def event_payload(event: AlertEvent) -> dict[str, Any]:
    rule = event.rule
    firing = event.kind == EventKind.FIRED
    value = "no data" if event.value is None else f"{event.value:g}"
    return {
        "text": f"[{'FIRING' if firing else 'RESOLVED'}] {rule.name}: {event.condition} "
                f"(value {value})",
        "rule": rule.name,
        "rule_id": rule.pk,
        "event_id": event.pk,
        "metric": rule.metric,
        "condition": event.condition,
        "value": event.value,
        "threshold": event.threshold,
        "state": "firing" if firing else "resolved",
        "started_at": event.started_at.isoformat(),
        "resolved_at": None if firing else event.at.isoformat(),
        "route": rule.route or None,
        "backend": rule.backend or None,
        "window_minutes": rule.window_minutes,
        "url": settings.SLUICE_PUBLIC_URL.rstrip("/") + ALERTS_PATH,
    }


def webhook_post(url: str, payload: dict[str, Any]) -> Delivery:
    """POST `payload` as JSON, retried with exponential backoff while worth it. Never raises."""
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        logger.error("alert webhook %r is not an http(s) URL", url)
        return Delivery(ok=False, attempts=0, error="not an http(s) URL")
    body = json.dumps(payload).encode()
    attempts = 0
    retrying = Retrying(
        stop=stop_after_attempt(max(1, settings.SLUICE_ALERT_WEBHOOK_ATTEMPTS)),
        wait=wait_exponential(multiplier=settings.SLUICE_ALERT_WEBHOOK_BACKOFF_S),
        retry=retry_if_exception(lambda e: isinstance(e, WebhookError) and e.retryable),
        reraise=True,
    )
    try:
        for attempt in retrying:
            with attempt:
                attempts += 1
                _post_once(url, body)
    except WebhookError as e:
        logger.error("alert webhook %s failed after %d attempt(s): %s", url, attempts, e)
        return Delivery(ok=False, attempts=attempts, error=str(e))
    except Exception as e:  # a bug here must not cost the other events their notifications
        logger.exception("alert webhook %s failed", url)
        return Delivery(ok=False, attempts=attempts, error=f"{type(e).__name__}: {e}")
    return Delivery(ok=True, attempts=attempts)


def _post_once(url: str, body: bytes) -> None:
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", "User-Agent": "sluice-alerts"})
    try:
        with urllib.request.urlopen(request, timeout=settings.SLUICE_ALERT_WEBHOOK_TIMEOUT_S) as r:
            r.read(65536)
    except urllib.error.HTTPError as e:
        retryable = e.code >= 500 or e.code in _RETRY_STATUS
        raise WebhookError(f"HTTP {e.code}", retryable=retryable) from None
    except ValueError as e:  # a URL urllib cannot parse
        raise WebhookError(str(e), retryable=False) from None
    except (urllib.error.URLError, OSError) as e:  # refused, reset, DNS, timeout
        reason = getattr(e, "reason", e)
        raise WebhookError(f"{type(reason).__name__}: {reason}", retryable=True) from None


def health_ok(base_url: str, *, timeout_s: float = HEALTH_TIMEOUT_S) -> bool:
    """GET {base_url}/health: True on 200, as vLLM answers while its engine is up."""
    try:
        with _DIRECT.open(f"{base_url.rstrip('/')}/health", timeout=timeout_s) as r:
            r.read(65536)
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False
