"""Old calls and old rollups are purged in bounded batches by the beat tasks."""
from datetime import timedelta

from django.utils import timezone

from analytics.models import Call, HourRollup, MinuteRollup
from analytics.tasks import calls_retention, rollups_retention
from tests.factories import call_create


def make_call(request_id: str, *, age: timedelta) -> None:
    call_create(created_at=timezone.now() - age, request_id=request_id)


def test_it_deletes_calls_older_than_the_retention_and_keeps_the_rest(db, settings):
    settings.SLUICE_CALL_RETENTION_DAYS = 7
    make_call("old", age=timedelta(days=8))
    make_call("new", age=timedelta(days=6))

    assert calls_retention() == 1

    assert list(Call.objects.values_list("request_id", flat=True)) == ["new"]


def test_it_deletes_rollups_older_than_their_retention_and_keeps_the_rest(db, settings):
    settings.SLUICE_ROLLUP_RETENTION_DAYS = 90
    now = timezone.now().replace(second=0, microsecond=0)
    for model in (MinuteRollup, HourRollup):
        model.objects.create(start=now - timedelta(days=91), route="old")
        model.objects.create(start=now - timedelta(days=89), route="new")

    assert rollups_retention() == 2

    for model in (MinuteRollup, HourRollup):
        assert list(model.objects.values_list("route", flat=True)) == ["new"]
