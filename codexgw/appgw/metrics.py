"""
The app gateway's Prometheus metrics (C{app-gateway.md} §12.3) on a private registry
(L{codexgw.prometheus}). No label carries a workspace id.

Decisions where the spec is silent: every label value the spec enumerates is created up front at 0,
so every series is visible before its first event; C{codexgw_turns_total{result}} is created for
C{completed} and every transport code of §8.3.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from codexgw.prometheus import render

#: C{codexgw_app_server_spawns_total{result}}.
SPAWN_RESULTS: Final = ("ok", "error", "capacity")
#: C{codexgw_app_server_exits_total{reason}}.
EXIT_REASONS: Final = ("idle", "shutdown", "crash")
#: C{codexgw_codex_home_transfers_total{op}} and C{{result}}.
TRANSFER_OPS: Final = ("upload", "restore")
TRANSFER_RESULTS: Final = ("ok", "not_found", "error")
#: C{codexgw_tui_messages_total{direction}}: C{client} = TUI → app-server, C{server} = the reverse.
TUI_DIRECTIONS: Final = ("client", "server")
#: C{codexgw_rpc_blocked_total{reason}}.
BLOCK_REASONS: Final = ("local_io", "host_config", "config_override")
#: C{codexgw_approvals_auto_replied_total{path}}.
APPROVAL_PATHS: Final = ("tui", "broker")
#: §8.3 transport codes; with C{completed} the C{result} values of C{codexgw_turns_total}.
TRANSPORT_CODES: Final = (
    "brokerTimeout",
    "codexRPCError",
    "capacityExceeded",
    "subprocessCrash",
    "wsDisconnect",
)


class AppMetrics:
    """
    The metrics of §12.3. Callers use the prometheus_client objects directly, e.g.
    C{metrics.rpc_blocked.labels(reason="local_io").inc()}.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.app_servers = Gauge("codexgw_app_servers", "Live app-server processes.", registry=r)
        self.spawns = Counter(
            "codexgw_app_server_spawns_total", "App-server spawns by result.", ["result"], registry=r
        )
        self.spawn_seconds = Histogram(
            "codexgw_app_server_spawn_seconds",
            "Time from spawn to readiness.",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.exits = Counter(
            "codexgw_app_server_exits_total", "App-server exits by reason.", ["reason"], registry=r
        )
        self.spawn_queue = Gauge(
            "codexgw_spawn_queue", "Ensures waiting for a spawn-concurrency slot.", registry=r
        )
        self.home_transfers = Counter(
            "codexgw_codex_home_transfers_total",
            "CODEX_HOME uploads and restores by result.",
            ["op", "result"],
            registry=r,
        )
        self.tui_connections = Gauge("codexgw_tui_connections", "Open TUI websockets.", registry=r)
        self.tui_messages = Counter(
            "codexgw_tui_messages_total", "TUI proxy messages by direction.", ["direction"], registry=r
        )
        self.slow_consumer_closes = Counter(
            "codexgw_tui_slow_consumer_closes_total", "TUIs closed as slow consumers.", registry=r
        )
        self.rpc_blocked = Counter(
            "codexgw_rpc_blocked_total", "TUI requests blocked by policy.", ["reason"], registry=r
        )
        self.approvals_auto_replied = Counter(
            "codexgw_approvals_auto_replied_total",
            "Approval requests answered by the gateway.",
            ["path"],
            registry=r,
        )
        self.broker_connections = Gauge(
            "codexgw_broker_connections", "Open Turn API broker connections.", registry=r
        )
        self.turns = Counter("codexgw_turns", "Turn API requests by result.", ["result"], registry=r)
        self.turn_seconds = Histogram(
            "codexgw_turn_seconds",
            "Turn API request durations.",
            buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600),
            registry=r,
        )
        for result in SPAWN_RESULTS:
            self.spawns.labels(result=result)
        for reason in EXIT_REASONS:
            self.exits.labels(reason=reason)
        for op in TRANSFER_OPS:
            for outcome in TRANSFER_RESULTS:
                self.home_transfers.labels(op=op, result=outcome)
        for direction in TUI_DIRECTIONS:
            self.tui_messages.labels(direction=direction)
        for reason in BLOCK_REASONS:
            self.rpc_blocked.labels(reason=reason)
        for path in APPROVAL_PATHS:
            self.approvals_auto_replied.labels(path=path)
        for result in ("completed", *TRANSPORT_CODES):
            self.turns.labels(result=result)

    def render(self) -> tuple[bytes, str]:
        """
        Return the text exposition and its content type, for C{GET /metrics}.
        """
        return render(self.registry)
