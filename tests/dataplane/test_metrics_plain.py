"""The per-request metrics kept as plain numbers (``dataplane.pipeline.metrics._Collector``)
render exactly what prometheus_client's own Counter and Histogram render for the same
observations: the same samples (bucket boundaries included), and the last exemplar of each
bucket."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.openmetrics.exposition import generate_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from dataplane.pipeline.metrics import ADDED, ADDED_BUCKETS, COST, REQUESTS, _Collector

# Each bucket's bounds exactly, between them, below the first and above the last.
VALUES = [0.0, 0.00005, *ADDED_BUCKETS, 0.0003, 0.07, 0.9999, 7.5, 31.0, 1e9]


def _samples(registry: CollectorRegistry) -> list[tuple[str, dict[str, str], float, Any]]:
    text = generate_latest(registry).decode()  # type: ignore[no-untyped-call]
    samples = [
        (s.name, s.labels, s.value, s.exemplar)
        for family in text_string_to_metric_families(text)  # type: ignore[no-untyped-call]
        for s in family.samples
        if not s.name.endswith("_created")
    ]
    return sorted(samples, key=lambda s: (s[0], sorted(s[1].items()), s[2]))


def test_plain_histogram_and_counter_render_what_prometheus_client_renders() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    plain = _Collector("3")
    ours.register(plain)
    labels = ("chat",)
    histogram = Histogram(
        ADDED.name, ADDED.documentation, [*ADDED.labels], buckets=ADDED_BUCKETS, registry=theirs
    )
    counter = Counter(REQUESTS.name, REQUESTS.documentation, [*REQUESTS.labels], registry=theirs)
    cost = Counter(COST.name, COST.documentation, [*COST.labels], registry=theirs)
    series = plain.series(ADDED, labels)
    requests = plain.series(REQUESTS, ("t", "m", "ok", "OK"))
    spent = plain.series(COST, ("t", "m"))
    for i, value in enumerate(VALUES):
        series.observe(value, f"cid-{i}")
        histogram.labels(*labels, "3").observe(value, {"correlation_id": f"cid-{i}"})
        requests.value += 1
        counter.labels("t", "m", "ok", "OK", "3").inc()
        spent.value += 0.000125
        cost.labels("t", "m", "3").inc(0.000125)

    def without_times(samples: list[Any]) -> list[Any]:
        return [
            (name, labels, value, None if e is None else (e.labels, e.value))
            for name, labels, value, e in samples
        ]

    assert without_times(_samples(ours)) == without_times(_samples(theirs))
    # Not an empty comparison: every bucket got a value and an exemplar.
    rendered = _samples(ours)
    assert sum(1 for s in rendered if s[0].endswith("_bucket") and s[3] is not None) == len(ADDED_BUCKETS) + 1


def test_a_series_appears_only_once_made() -> None:
    registry = CollectorRegistry()
    registry.register(_Collector("0"))
    assert [s for s in _samples(registry) if s[0].startswith(("signalbox_", "gen_ai_"))] == []
