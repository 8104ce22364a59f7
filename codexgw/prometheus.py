"""
Prometheus text exposition shared by every codexgw service: a private registry per service object
(two gateways in one process, as in tests and the dev stack, never share counters) rendered without
the C{_created} samples prometheus_client adds to counters and histograms (they are in no spec's
metric table, and prometheus_client's switch to turn them off is process-wide).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric

#: Content type of L{render}'s bytes (text format 0.0.4).
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"


class _WithoutCreated:
    """
    A collector showing another collector's metrics without their C{_created} samples.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterable[Metric]:
        for metric in self._registry.collect():
            # collect() builds fresh Metric objects on every call, so filtering them in place is safe.
            metric.samples = [s for s in metric.samples if s.name != metric.name + "_created"]
            yield metric


def render(registry: CollectorRegistry) -> tuple[bytes, str]:
    """
    Return the text exposition of every metric of C{registry} and its content type.
    """
    return generate_latest(_WithoutCreated(registry)), CONTENT_TYPE
