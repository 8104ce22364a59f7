"""
Tests for L{codexgw.execgw.metrics}: the metric names, types and label sets of C{exec-gateway.md}
§10.2 and their exposition (§4.1, acceptance item 8).
"""

from __future__ import annotations

from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SynchronousTestCase

from codexgw.execgw.metrics import ExecMetrics
from codexgw.prometheus import CONTENT_TYPE

# metric → (type, label names), exactly as the table of §10.2 (exposition names).
TABLE = {
    "cxg_exec_inbound_connected": ("gauge", ()),
    "cxg_exec_inbound_connections_total": ("counter", ("outcome",)),
    "cxg_exec_bridges_active": ("gauge", ()),
    "cxg_exec_bridge_dials_total": ("counter", ("outcome",)),
    "cxg_exec_bridge_closed_total": ("counter", ("cause",)),
    "cxg_exec_frames_total": ("counter", ("direction",)),
    "cxg_exec_frame_bytes_total": ("counter", ("direction",)),
    "cxg_exec_frames_dropped_total": ("counter", ("where", "why")),
    "cxg_exec_relays_active": ("gauge", ()),
    "cxg_exec_relays_total": ("counter", ("outcome",)),
    "cxg_exec_relay_bytes_total": ("counter", ()),
    "cxg_exec_sdk_requests_total": ("counter", ("route", "status")),
    "cxg_exec_store_seconds": ("histogram", ("op",)),
    "cxg_exec_store_errors_total": ("counter", ("op",)),
    "cxg_exec_revoked_turns": ("gauge", ()),
}


def exposition(metrics: ExecMetrics) -> str:
    """
    Render C{metrics} and return the text.
    """
    body, _ = metrics.render()
    return body.decode("utf-8")


def declared(text: str) -> dict[str, str]:
    """
    Return C{metric → type} from the C{# TYPE} lines of an exposition.
    """
    types = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            types[name] = kind
    return types


class ExpositionTests(SynchronousTestCase):
    """
    What C{GET /metrics} serves.
    """

    def test_contentType(self) -> None:
        """
        The content type is the Prometheus text format 0.0.4.
        """
        _, content_type = ExecMetrics().render()
        self.assertEqual(content_type, "text/plain; version=0.0.4; charset=utf-8")
        self.assertEqual(CONTENT_TYPE, content_type)

    def test_everyMetricDeclared(self) -> None:
        """
        Every metric of §10.2 is declared with its type, before any event, and nothing else is
        (no C{_created} series).
        """
        self.assertEqual(declared(exposition(ExecMetrics())), {n: t for n, (t, _) in TABLE.items()})

    def test_labelSets(self) -> None:
        """
        After one use of each metric, every sample carries exactly the table's labels (plus C{le} on
        histogram buckets).
        """
        metrics = ExecMetrics()
        metrics.sdk_requests.labels(route="envs/list", status="200").inc()
        metrics.store_seconds.labels(op="ping").observe(0.01)
        metrics.store_errors.labels(op="ping").inc()
        metrics.relay_bytes.inc(10)
        seen = set()
        for family in text_string_to_metric_families(exposition(metrics)):
            for sample in family.samples:
                name = sample.name
                for suffix in ("_bucket", "_sum", "_count"):
                    if family.type == "histogram" and name.endswith(suffix):
                        name = name.removesuffix(suffix)
                _, labels = TABLE[name]
                expected = set(labels) | ({"le"} if sample.name.endswith("_bucket") else set())
                self.assertEqual(set(sample.labels), expected, sample.name)
                seen.add(name)
        self.assertEqual(seen, set(TABLE))

    def test_knownLabelValuesAtZero(self) -> None:
        """
        The enumerated label values are exposed at 0 from the start.
        """
        text = exposition(ExecMetrics())
        for line in (
            'cxg_exec_inbound_connections_total{outcome="unauthorized"} 0.0',
            'cxg_exec_bridge_dials_total{outcome="stream_limit"} 0.0',
            'cxg_exec_bridge_dials_total{outcome="first_frame"} 0.0',
            'cxg_exec_bridge_closed_total{cause="slow_consumer"} 0.0',
            'cxg_exec_frames_total{direction="to_executor"} 0.0',
            'cxg_exec_frames_dropped_total{where="inbound",why="no_route"} 0.0',
            'cxg_exec_frames_dropped_total{where="bridge",why="wrong_stream_id"} 0.0',
            'cxg_exec_relays_total{outcome="abandoned"} 0.0',
            "cxg_exec_revoked_turns 0.0",
        ):
            with self.subTest(line=line):
                self.assertIn(line, text.splitlines())

    def test_counting(self) -> None:
        """
        Updates show up in the exposition.
        """
        metrics = ExecMetrics()
        metrics.bridge_dials.labels(outcome="paired").inc()
        metrics.frame_bytes.labels(direction="to_bridge").inc(1024)
        metrics.inbound_connected.set(2)
        lines = exposition(metrics).splitlines()
        self.assertIn('cxg_exec_bridge_dials_total{outcome="paired"} 1.0', lines)
        self.assertIn('cxg_exec_frame_bytes_total{direction="to_bridge"} 1024.0', lines)
        self.assertIn("cxg_exec_inbound_connected 2.0", lines)


class RegistryTests(SynchronousTestCase):
    """
    Each instance has its own registry.
    """

    def test_independentInstances(self) -> None:
        """
        Two instances coexist without clashing, count separately and leave the global registry alone.
        """
        first, second = ExecMetrics(), ExecMetrics()
        first.relay_bytes.inc(5)
        self.assertIn("cxg_exec_relay_bytes_total 5.0", exposition(first).splitlines())
        self.assertIn("cxg_exec_relay_bytes_total 0.0", exposition(second).splitlines())
        self.assertIsNot(first.registry, REGISTRY)
        self.assertIsNone(REGISTRY.get_sample_value("cxg_exec_relay_bytes_total"))
