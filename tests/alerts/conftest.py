"""Fixtures of the alert tests (helpers in tests/alerts/support.py)."""
from __future__ import annotations

import socket

import pytest

from alerts.models import AlertRule
from tests.alerts.support import Recorder


@pytest.fixture(autouse=True)
def _alerts_settings(settings):
    """No global webhook, and webhooks that retry fast."""
    settings.SLUICE_ALERT_WEBHOOK_URL = ""
    settings.SLUICE_ALERT_WEBHOOK_BACKOFF_S = 0.05
    settings.SLUICE_ALERT_WEBHOOK_TIMEOUT_S = 2.0
    settings.SLUICE_ALERT_WEBHOOK_ATTEMPTS = 3
    settings.SLUICE_PUBLIC_URL = "https://sluice.example.com"


@pytest.fixture
def no_rules(db):
    """No rules but the test's own: the migration's defaults would fire on its data."""
    AlertRule.objects.all().delete()


@pytest.fixture
def http_server():
    server = Recorder()
    server.thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def dead_url():
    """A loopback address nothing listens on: connections are refused."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}"
