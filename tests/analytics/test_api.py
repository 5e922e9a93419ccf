"""The ops API: admin token or staff session, the summary and the recent calls."""
import pytest

from tests.factories import calls_create

TOKEN = "sk-master-api-tests"


@pytest.fixture(autouse=True)
def master_key(settings):
    settings.SLUICE_MASTER_KEY = TOKEN


def make_calls(n: int, *, route: str, status: int = 200) -> None:
    calls_create(n, route=route, status_code=status)


def test_it_refuses_anonymous_callers(client, db):
    assert client.get("/api/stats/summary").status_code == 401


def test_it_refuses_a_wrong_token(client, db):
    response = client.get("/api/stats/summary", HTTP_AUTHORIZATION="Bearer nope")

    assert response.status_code == 401


def test_it_serves_the_summary_to_the_master_token(client, db):
    make_calls(3, route="default")
    make_calls(1, route="default", status=502)

    response = client.get("/api/stats/summary?minutes=5", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")

    assert response.status_code == 200
    body = response.json()
    assert body["requests"] == 4
    assert body["error_rate"] == 0.25
    assert body["by_route"][0]["route"] == "default"


def test_it_serves_the_summary_to_a_staff_session(admin_client):
    assert admin_client.get("/api/stats/summary").status_code == 200


def test_it_lists_recent_calls_filtered_by_route_and_status(client, db):
    make_calls(2, route="a")
    make_calls(3, route="b")
    make_calls(1, route="b", status=502)
    auth = {"HTTP_AUTHORIZATION": f"Bearer {TOKEN}"}

    by_route = client.get("/api/calls?route=b", **auth).json()
    failed = client.get("/api/calls?route=b&status=502", **auth).json()
    limited = client.get("/api/calls?limit=2", **auth).json()

    assert len(by_route) == 4
    assert [c["status_code"] for c in failed] == [502]
    assert len(limited) == 2


def test_it_rejects_a_bad_window(client, db):
    response = client.get("/api/stats/summary?minutes=0", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")

    assert response.status_code == 422


def test_it_publishes_openapi_docs(client, db):
    assert client.get("/api/openapi.json").status_code == 200
