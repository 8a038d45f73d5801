"""A gateway's `GET /metrics`, read with prometheus_client's own parser."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
_FAMILY = "#family"


def samples(text: str) -> Samples:
    """Every sample of an exposition, by name and labels."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        out[(_FAMILY, frozenset({("name", family.name)}))] = 0  # exported, even with no sample
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels` (0 when none has them); the
    metric must be in the exposition."""
    assert _listed(samples, name), f"{name} is not exported"
    return summed(samples, name, labels)


def _listed(samples: Samples, name: str) -> bool:
    families = {dict(labels)["name"] for n, labels in samples if n == _FAMILY}
    return any(name.startswith(family) for family in families)


def summed(samples: Samples, name: str, labels: dict[str, str]) -> float:
    """The sum of `name`'s samples whose labels include `labels`, listed or not."""
    wanted = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and wanted <= lab)


def scrape(url: str) -> Samples:
    """The gateway's `/metrics` at `url`, which must answer in the text format."""
    response = httpx.get(f"{url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return samples(response.text)
