"""Read /metrics text the way Prometheus does (label order and number format do not matter)."""

from prometheus_client.parser import text_string_to_metric_families


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """{(sample name, frozenset of label items): value} for every sample in an exposition."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(text: str, name: str, **labels: str) -> float | None:
    """One sample's value, None when the exposition has no such sample."""
    return samples(text).get((name, frozenset(labels.items())))
