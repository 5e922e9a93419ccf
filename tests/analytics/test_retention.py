"""Old calls are purged in bounded batches by the beat task."""
from datetime import timedelta

from django.utils import timezone

from analytics.models import Call
from analytics.tasks import calls_retention
from tests.factories import call_create


def make_call(request_id: str, *, age: timedelta) -> None:
    call_create(created_at=timezone.now() - age, request_id=request_id)


def test_it_deletes_calls_older_than_the_retention_and_keeps_the_rest(db, settings):
    settings.SLUICE_CALL_RETENTION_DAYS = 7
    make_call("old", age=timedelta(days=8))
    make_call("new", age=timedelta(days=6))

    assert calls_retention() == 1

    assert list(Call.objects.values_list("request_id", flat=True)) == ["new"]
