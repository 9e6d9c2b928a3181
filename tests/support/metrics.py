"""Reading a Prometheus exposition in tests, with prometheus_client's own parser (as Prometheus would)."""

from __future__ import annotations

from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["Scrape", "metric", "scrape"]


class Scrape:
    """One parsed exposition: ``value("http_requests_total", route="/echo")`` sums matching samples."""

    def __init__(self, text: str) -> None:
        self.families = list(text_string_to_metric_families(text))
        self.samples = [sample for family in self.families for sample in family.samples]

    def types(self) -> dict[str, str]:
        return {family.name: family.type for family in self.families}

    def value(self, name: str, **labels: str) -> float:
        return sum(
            s.value for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )

    def label_values(self, label: str) -> set[str]:
        return {s.labels[label] for s in self.samples if label in s.labels}


def scrape(client: Any) -> Scrape:
    """GET /metrics through a Flask test client (or a URL, with requests) and parse it."""
    if isinstance(client, str):
        response = requests.get(f"{client}/metrics", timeout=5)
        assert response.status_code == 200
        return Scrape(response.text)
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    return Scrape(response.get_data(as_text=True))


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` with ``labels`` in the exposition ``text``."""
    return Scrape(text).value(name, **labels)
