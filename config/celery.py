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
    # On PostgreSQL whole day partitions go instead (analytics/partitions.py).
    "calls-retention": {"task": "analytics.tasks.calls_retention", "schedule": 600.0},
    # PostgreSQL: create the call table's partitions of today and the next 7 days (migrate
    # does it too). Hourly, so that a day has many tries; a missed day's rows wait in the
    # DEFAULT partition and move into their partition when it is made.
    "call-partitions-ensure": {"task": "analytics.tasks.call_partitions_ensure",
                               "schedule": 3600.0},
    # Roll the calls up into minute and hour rows, which the summary and the dashboard read;
    # calls since the last run are read raw, so this period bounds how much that is. A run
    # queued longer than a period is dropped: the next one does its work.
    "rollups-update": {"task": "analytics.tasks.rollups_update", "schedule": 15.0,
                       "options": {"expires": 15.0}},
    # Drop rollup rows older than SLUICE_ROLLUP_RETENTION_DAYS, a bounded batch per run.
    "rollups-retention": {"task": "analytics.tasks.rollups_retention", "schedule": 600.0},
    # Batches whose worker died are queued again (or expired past their 24 h window).
    "batches-recover": {"task": "batch.tasks.batches_recover", "schedule": 60.0},
    # Evaluate the alert rules (alerts/evaluate.py) and send their notifications. Rules lock
    # with SKIP LOCKED, so overlapping runs fire each alert once; a run queued longer than a
    # period is dropped, since the next one reads the same windows a little later.
    "alerts-evaluate": {"task": "alerts.tasks.alerts_evaluate", "schedule": 15.0,
                        "options": {"expires": 15.0}},
}
