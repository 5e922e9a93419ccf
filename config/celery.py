"""The Celery app: Redis as broker when REDIS_URL is set, else the filesystem transport.

The beat schedule lives here, in code, every entry commented."""
from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("sluice")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

app.conf.beat_schedule = {
    # Drop call rows older than SLUICE_CALL_RETENTION_DAYS, a bounded batch per run.
    "calls-retention": {"task": "analytics.tasks.calls_retention", "schedule": 600.0},
    # Batches whose worker died are queued again (or expired past their 24 h window).
    "batches-recover": {"task": "batch.tasks.batches_recover", "schedule": 60.0},
}
