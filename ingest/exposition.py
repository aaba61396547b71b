"""Prometheus text exposition (format 0.0.4): metric families, label escaping, and a histogram.

Format: prometheus.io/docs/instrumenting/exposition_formats/#text-based-format. Label values
escape backslash, double quote and line feed; HELP text escapes backslash and line feed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

__all__ = ["CONTENT_TYPE", "Family", "Histogram", "escape_help", "escape_label", "format_value", "render"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    """Integers as they are, floats in shortest round-trip form, infinities as Prometheus spells them."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


@dataclass(slots=True)
class Family:
    """One metric family: HELP and TYPE lines, then its samples in the order they were added."""

    name: str
    kind: str  # counter | gauge | histogram
    help: str
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)  # (suffix, labels, v)

    def add(self, value: float, suffix: str = "", **labels: str) -> Family:
        self.samples.append((suffix, labels, value))
        return self

    def lines(self) -> Iterable[str]:
        yield f"# HELP {self.name} {escape_help(self.help)}"
        yield f"# TYPE {self.name} {self.kind}"
        for suffix, labels, value in self.samples:
            text = ",".join(f'{k}="{escape_label(v)}"' for k, v in labels.items())
            yield (
                f"{self.name}{suffix}{{{text}}} {format_value(value)}"
                if text
                else (f"{self.name}{suffix} {format_value(value)}")
            )


def render(families: Iterable[Family]) -> str:
    """The exposition body: every family, one sample per line, ending with a line feed."""
    return "".join(line + "\n" for family in families for line in family.lines())


class Histogram:
    """Cumulative buckets, sum and count per label set, for values observed in this process."""

    def __init__(self, buckets: Iterable[float] = LATENCY_BUCKETS) -> None:
        self._bounds = tuple(sorted(buckets))
        self._series: dict[tuple[tuple[str, str], ...], tuple[list[int], list[float]]] = {}

    def observe(self, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        counts, total = self._series.setdefault(key, ([0] * (len(self._bounds) + 1), [0.0]))
        for i, bound in enumerate(self._bounds):
            if value <= bound:
                counts[i] += 1
        counts[-1] += 1  # +Inf: every observation
        total[0] += value

    def family(self, name: str, help: str) -> Family:
        fam = Family(name, "histogram", help)
        for key, (counts, total) in sorted(self._series.items()):
            labels: Mapping[str, str] = dict(key)
            for bound, count in zip((*self._bounds, math.inf), counts, strict=True):
                fam.add(count, "_bucket", **labels, le=format_value(bound))
            fam.add(total[0], "_sum", **labels)
            fam.add(counts[-1], "_count", **labels)
        return fam
