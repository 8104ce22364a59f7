"""
The exec gateway's Prometheus metrics (C{exec-gateway.md} §10.2) and their exposition (§4.1).

Each L{ExecMetrics} owns its own C{CollectorRegistry}, not prometheus_client's global one, so two
gateways in one process (tests, the dev stack) never share or clash over counters. No metric has a
per-executor or per-workspace label.

Decisions where the spec is silent:
 - Labels whose values the spec enumerates are created up front at 0, so every series is visible (and
   rates are right) before the first event: C{outcome}, C{cause}, C{direction}, C{where}/C{why} and the
   relay outcomes of C{relay.finished}. C{route}, C{status} and C{op} appear as they are used.
 - The C{_created} series are left out of the exposition (L{codexgw.prometheus}).
 - C{cxg_exec_store_seconds} uses prometheus_client's default buckets (5 ms … 10 s), which cover the
   store deadlines of 2 s and 5 s.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from codexgw.prometheus import render

#: C{cxg_exec_inbound_connections_total{outcome}}.
INBOUND_OUTCOMES: Final = ("accepted", "unauthorized", "error")
#: The C{why} values of C{bridge.rejected} (§10.1).
BRIDGE_REJECT_WHYS: Final = (
    "missing_bearer",
    "missing_parameters",
    "unauthorized",
    "expired",
    "revoked",
    "forbidden",
    "store_error",
    "offline",
    "stream_limit",
)
#: C{cxg_exec_bridge_dials_total{outcome}}.
BRIDGE_DIAL_OUTCOMES: Final = ("paired", *BRIDGE_REJECT_WHYS, "first_frame")
#: C{cxg_exec_bridge_closed_total{cause}}.
BRIDGE_CLOSE_CAUSES: Final = (
    "client",
    "executor_gone",
    "reset",
    "idle",
    "slow_consumer",
    "too_big",
    "collision",
    "shutdown",
)
#: C{direction} of C{cxg_exec_frames_total} and C{cxg_exec_frame_bytes_total}.
FRAME_DIRECTIONS: Final = ("to_executor", "to_bridge")
#: C{(where, why)} of C{cxg_exec_frames_dropped_total}: the C{why} values of C{inbound.frame_dropped}
#: and C{bridge.frame_dropped} (§10.1).
FRAME_DROPS: Final = (
    ("inbound", "text"),
    ("inbound", "undecodable"),
    ("inbound", "missing_stream_id"),
    ("inbound", "no_route"),
    ("bridge", "undecodable"),
    ("bridge", "wrong_stream_id"),
)
#: C{cxg_exec_relays_total{outcome}}: the outcomes of C{relay.finished}.
RELAY_OUTCOMES: Final = ("ok", "timeout", "error", "abandoned")


class ExecMetrics:
    """
    The metrics of §10.2 on a private registry.

    Label values are those of the constants above; callers use the prometheus_client objects directly,
    e.g. C{metrics.bridge_dials.labels(outcome="paired").inc()}.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.inbound_connected = Gauge(
            "cxg_exec_inbound_connected", "Executors with a live inbound websocket.", registry=r
        )
        self.inbound_connections = Counter(
            "cxg_exec_inbound_connections_total",
            "Inbound websocket attempts by outcome.",
            ["outcome"],
            registry=r,
        )
        self.bridges_active = Gauge("cxg_exec_bridges_active", "Open bridge websockets.", registry=r)
        self.bridge_dials = Counter(
            "cxg_exec_bridge_dials_total", "Bridge dials by outcome.", ["outcome"], registry=r
        )
        self.bridge_closed = Counter(
            "cxg_exec_bridge_closed_total", "Bridges closed by cause.", ["cause"], registry=r
        )
        self.frames = Counter(
            "cxg_exec_frames_total", "Relay frames forwarded.", ["direction"], registry=r
        )
        self.frame_bytes = Counter(
            "cxg_exec_frame_bytes_total", "Bytes of relay frames forwarded.", ["direction"], registry=r
        )
        self.frames_dropped = Counter(
            "cxg_exec_frames_dropped_total",
            "Frames dropped instead of forwarded.",
            ["where", "why"],
            registry=r,
        )
        self.relays_active = Gauge(
            "cxg_exec_relays_active", "Byte relays pending or transferring.", registry=r
        )
        self.relays = Counter(
            "cxg_exec_relays_total", "Byte relays finished by outcome.", ["outcome"], registry=r
        )
        self.relay_bytes = Counter(
            "cxg_exec_relay_bytes_total", "Bytes carried by the byte relay.", registry=r
        )
        self.sdk_requests = Counter(
            "cxg_exec_sdk_requests_total",
            "SDK REST requests by route and status.",
            ["route", "status"],
            registry=r,
        )
        self.store_seconds = Histogram(
            "cxg_exec_store_seconds", "Store call durations.", ["op"], registry=r
        )
        self.store_errors = Counter(
            "cxg_exec_store_errors_total", "Failed store calls.", ["op"], registry=r
        )
        self.revoked_turns = Gauge(
            "cxg_exec_revoked_turns", "Entries in the revoked-turn set.", registry=r
        )
        for outcome in INBOUND_OUTCOMES:
            self.inbound_connections.labels(outcome=outcome)
        for outcome in BRIDGE_DIAL_OUTCOMES:
            self.bridge_dials.labels(outcome=outcome)
        for cause in BRIDGE_CLOSE_CAUSES:
            self.bridge_closed.labels(cause=cause)
        for direction in FRAME_DIRECTIONS:
            self.frames.labels(direction=direction)
            self.frame_bytes.labels(direction=direction)
        for where, why in FRAME_DROPS:
            self.frames_dropped.labels(where=where, why=why)
        for outcome in RELAY_OUTCOMES:
            self.relays.labels(outcome=outcome)

    def render(self) -> tuple[bytes, str]:
        """
        Return the text exposition of every metric and its content type, for C{GET /metrics}.
        """
        return render(self.registry)
