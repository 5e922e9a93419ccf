"""The time range and filters of a dashboard page, from and back to its URL query string, so
that every page, every refresh and every nav link reads the same window."""
from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlencode

from django.http import HttpRequest

from analytics.selectors import Filters

# key → (label, minutes, bucket seconds): ~15-100 buckets per chart; hour buckets read the
# hour rollups.
RANGES: dict[str, tuple[str, int, int]] = {
    "15m": ("15 min", 15, 60),
    "1h": ("1 h", 60, 60),
    "24h": ("24 h", 24 * 60, 15 * 60),
    "7d": ("7 d", 7 * 24 * 60, 3600),
}
DEFAULT_RANGE = "15m"
FILTERS = ("route", "model", "backend", "key")  # query parameters, kept on every page


@dataclass(frozen=True, slots=True)
class Query:
    range: str
    params: dict[str, str]  # the filters as given (valid ones only)

    @property
    def label(self) -> str:
        return RANGES[self.range][0]

    @property
    def minutes(self) -> int:
        return RANGES[self.range][1]

    @property
    def bucket_s(self) -> int:
        return RANGES[self.range][2]

    @property
    def filters(self) -> Filters:
        key = self.params.get("key")
        return Filters(route=self.params.get("route"), served_model=self.params.get("model"),
                       backend=self.params.get("backend"),
                       api_key_id=int(key) if key is not None else None)

    @property
    def qs(self) -> str:
        """The query string of the range and filters (no leading ?), for links and data URLs."""
        return urlencode({"range": self.range, **self.params})


def query_parse(request: HttpRequest) -> Query:
    """Unknown ranges fall back to the default; a key that is not a number is ignored."""
    rng = request.GET.get("range", DEFAULT_RANGE)
    params = {name: request.GET[name] for name in FILTERS if request.GET.get(name)}
    if "key" in params and not params["key"].isdigit():
        del params["key"]
    return Query(range=rng if rng in RANGES else DEFAULT_RANGE, params=params)
