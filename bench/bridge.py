"""
Bridge benchmark (C{delivery.md} §6): the real C{twist codexgw-exec} between a client and an echoing
executor, against a direct Autobahn echo, in the same run.

Processes: this client; the gateway; an echo executor dialled in through the gateway; a direct echo
server. Each far end is its own process, so the only difference between the two paths is the hop
through the gateway. Measured:

 - RTT: 64-byte Data frames, one at a time (p50/p99, added latency);
 - message rate: 1 KiB Data frames on 20 streams with 16 in flight each (messages/s, ratio);
 - bulk: 64 KiB frames, 256 MiB each way, 16 in flight (GiB/s), and the RTT of 1 MiB messages (p99).

Results go to C{bench/results/bridge.md} and C{bench/results/bridge.png}. Run it with C{make bench} or
C{python -m bench.bridge}.
"""

# Autobahn, treq and Twisted's reactor APIs are untyped.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import treq
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol, connectWS
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater, react

from codexgw import relayframe, tokens
from codexgw.config import Secret

RESULTS = Path(__file__).parent / "results"
RTT_COUNT = 2000
RATE_STREAMS = 20
RATE_WINDOW = 16
RATE_PER_STREAM = 2000
BULK_FRAME = 64 * 1024
BULK_TOTAL = 256 * 1024 * 1024
BULK_WINDOW = 16
LARGE_MESSAGE = 1024 * 1024
LARGE_COUNT = 100

_reactor: Any = reactor


class MeasuringClient(WebSocketClientProtocol):
    """
    A websocket client that hands each binary message to the current C{on_message} callback.
    """

    on_message: Callable[[bytes], None]

    def onOpen(self) -> None:
        """
        The factory's C{opened} Deferred fires with this protocol.
        """
        self.on_message = _ignore
        self.factory.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """
        Hand the message on.
        """
        self.on_message(payload)


class MeasuringFactory(WebSocketClientFactory):
    """
    Builds one L{MeasuringClient}; C{opened} fires with it once its handshake completed.
    """

    protocol = MeasuringClient

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        super().__init__(url, headers=headers)
        self.setProtocolOptions(maxFramePayloadSize=0, maxMessagePayloadSize=0, autoPingInterval=0)
        self.opened: Deferred[MeasuringClient] = Deferred()


def _ignore(payload: bytes) -> None:
    pass


def connect(url: str, headers: dict[str, str] | None = None) -> Deferred[MeasuringClient]:
    """
    Open a websocket client connection to C{url}.
    """
    factory = MeasuringFactory(url, headers or {})
    connectWS(factory)
    return factory.opened


def percentile(samples: list[float], q: float) -> float:
    """
    The C{q}-quantile of C{samples} (nearest rank).
    """
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def round_trips(client: MeasuringClient, frame: bytes, count: int) -> list[float]:
    """
    Send C{frame} C{count} times, one at a time; return each round trip in seconds.
    """
    samples: list[float] = []
    for _ in range(count):
        done: Deferred[bytes] = Deferred()
        client.on_message = done.callback
        start = time.perf_counter()
        client.sendMessage(frame, isBinary=True)
        await done
        samples.append(time.perf_counter() - start)
    return samples


class WindowedLoad:
    """
    Keep C{window} copies of one frame in flight on one client until C{total} came back.
    """

    def __init__(self, client: MeasuringClient, frame: bytes, total: int, window: int) -> None:
        self.client, self.frame, self.total, self.window = client, frame, total, window
        self.sent = self.received = 0
        self.done: Deferred[None] = Deferred()
        client.on_message = self.received_one

    def start(self) -> None:
        """
        Fill the window.
        """
        for _ in range(min(self.window, self.total)):
            self.send_one()

    def send_one(self) -> None:
        """
        Send one more copy.
        """
        self.sent += 1
        self.client.sendMessage(self.frame, isBinary=True)

    def received_one(self, payload: bytes) -> None:
        """
        One came back: send the next, or finish.
        """
        self.received += 1
        if self.sent < self.total:
            self.send_one()
        elif self.received == self.total:
            self.done.callback(None)


async def windowed(
    clients: list[MeasuringClient], frames: list[bytes], per_client: int, window: int
) -> float:
    """
    Keep C{window} frames in flight on each client until C{per_client} came back on each; return the
    elapsed seconds.
    """
    loads = [WindowedLoad(c, f, per_client, window) for c, f in zip(clients, frames, strict=True)]
    start = time.perf_counter()
    for load in loads:
        load.start()
    for load in loads:
        await load.done
    return time.perf_counter() - start


class Gateway:
    """
    The real C{twist codexgw-exec} in a temporary directory, plus the secrets it was given.
    """

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="codexgw-bench-"))
        self.secrets = {
            name: secrets.token_hex(32)
            for name in (
                "CXG_CAPTOKEN_HMAC_SECRET",
                "CXG_INTERNAL_SHARED_SECRET",
                "CXG_AGENTSERVER_INTERNAL_SECRET",
            )
        }
        env = {
            **os.environ,
            **self.secrets,
            "CXG_MAX_STREAMS_PER_EXECUTOR": "0",
            "CXG_BRIDGE_IDLE_TIMEOUT": "0",
            "CXG_PING_INTERVAL": "0",
        }
        self.log = self.dir / "gateway.log"
        twist = Path(sys.executable).parent / "twist"
        # CXG_BENCH_PROFILE=<file> runs the gateway under cProfile and writes its stats there.
        profile = os.environ.get("CXG_BENCH_PROFILE")
        runner = [str(twist)]
        if profile:
            runner = [sys.executable, "-m", "cProfile", "-o", profile, *runner]
        self.process = subprocess.Popen(
            [*runner, "--log-format=json", f"--log-file={self.log}", "codexgw-exec",
             "--listen", "tcp:0:interface=127.0.0.1"],
            cwd=self.dir, env=env, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        self.port = 0

    async def wait_listening(self) -> int:
        """
        Wait (bounded) for the C{exec_gateway.started} event; return the port.
        """
        for _ in range(300):
            if self.log.exists():
                for line in self.log.read_text().splitlines():
                    record = json.loads(line.lstrip("\x1e") or "{}")
                    if record.get("event") == "exec_gateway.started":
                        self.port = int(record["port"])
                        return self.port
            await deferLater(_reactor, 0.05, lambda: None)
        raise RuntimeError("the gateway did not start within 15 s")

    def stop(self) -> None:
        """
        Stop the gateway by pid.
        """
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def spawn_echo(*args: str) -> tuple[subprocess.Popen[str], str]:
    """
    Start C{python -m bench.echo ARGS}; return it and its first line of output.
    """
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.echo", *args],
        stdout=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    assert process.stdout is not None
    return process, process.stdout.readline().strip()


async def prepare(gateway: Gateway) -> tuple[str, str]:
    """
    Register and bind an executor, dial it in as an echo; return its exe id and the bridge base URL.
    """
    base = f"http://127.0.0.1:{gateway.port}"
    admin: dict[bytes | str, bytes | str] = {
        "X-Internal-Secret": gateway.secrets["CXG_AGENTSERVER_INTERNAL_SECRET"],
        "X-User-Id": "bench",
    }
    registered = await (
        await treq.post(f"{base}/api/codex-exec/register", json={}, headers=admin)
    ).json()
    exe_id, token = registered["exe_id"], registered["registration_token"]
    await treq.post(
        f"{base}/api/codex-exec/workspaces/bench/executors",
        json={"exe_id": exe_id, "name": "bench"},
        headers=admin,
    )
    bearer: dict[bytes | str, bytes | str] = {"Authorization": f"Bearer {token}"}
    cloud = await (await treq.post(f"{base}/cloud/executor/{exe_id}/register", headers=bearer)).json()
    return exe_id, cloud["url"]


def summary_rows(results: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """
    The Markdown table rows: measure, codexgw, direct, ratio or added, target.
    """
    r = results
    us = 1e6
    return [
        ("RTT p50 (64 B)", f"{r['rtt_gw_p50'] * us:.0f} µs", f"{r['rtt_direct_p50'] * us:.0f} µs",
         f"{(r['rtt_gw_p50'] - r['rtt_direct_p50']) * us:+.0f} µs", "added ≤ 80 µs"),
        ("RTT p99 (64 B)", f"{r['rtt_gw_p99'] * us:.0f} µs", f"{r['rtt_direct_p99'] * us:.0f} µs",
         f"{(r['rtt_gw_p99'] - r['rtt_direct_p99']) * us:+.0f} µs", "added ≤ 150 µs"),
        ("message rate (1 KiB, 20×16)", f"{r['rate_gw']:,.0f} msg/s", f"{r['rate_direct']:,.0f} msg/s",
         f"{r['rate_gw'] / r['rate_direct']:.0%}", "≥ 60 % of direct; ≥ 64k msg/s"),
        ("bulk (64 KiB frames, 256 MiB)", f"{r['bulk_gw']:.2f} GiB/s",
         f"{r['bulk_direct']:.2f} GiB/s", f"{r['bulk_gw'] / r['bulk_direct']:.0%}", "≥ 1 GiB/s"),
        ("1 MiB message RTT p99", f"{r['large_gw_p99'] * 1e3:.1f} ms",
         f"{r['large_direct_p99'] * 1e3:.1f} ms",
         f"{(r['large_gw_p99'] - r['large_direct_p99']) * 1e3:+.1f} ms", "≤ 15 ms"),
    ]  # fmt: skip


def write_results(results: dict[str, Any]) -> str:
    """
    Write the Markdown table and the PNG chart; return the table.
    """
    RESULTS.mkdir(exist_ok=True)
    lines = [
        "# Bridge benchmark",
        "",
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {os.cpu_count()} cores, "
        "client, gateway and echo peers as separate processes on 127.0.0.1.",
        "",
        "| measure | codexgw | direct | codexgw vs direct | target |",
        "|---|---|---|---|---|",
        *(f"| {' | '.join(row)} |" for row in summary_rows(results)),
        "",
    ]
    table = "\n".join(lines)
    (RESULTS / "bridge.md").write_text(table)
    (RESULTS / "bridge.json").write_text(json.dumps(results, indent=2) + "\n")
    import matplotlib  # noqa: PLC0415 (only `make bench` installs it)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    figure, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    panels = [
        ("RTT 64 B (µs)", ["p50", "p99"],
         [results["rtt_direct_p50"] * 1e6, results["rtt_direct_p99"] * 1e6],
         [results["rtt_gw_p50"] * 1e6, results["rtt_gw_p99"] * 1e6]),
        ("message rate (k msg/s)", ["1 KiB"],
         [results["rate_direct"] / 1e3], [results["rate_gw"] / 1e3]),
        ("bulk (GiB/s)", ["64 KiB frames"], [results["bulk_direct"]], [results["bulk_gw"]]),
    ]  # fmt: skip
    for axis, (title, labels, direct, gateway) in zip(axes, panels, strict=True):
        positions = range(len(labels))
        axis.bar([p - 0.2 for p in positions], direct, width=0.4, label="direct")
        axis.bar([p + 0.2 for p in positions], gateway, width=0.4, label="codexgw")
        axis.set_xticks(list(positions), labels)
        axis.set_title(title)
    axes[0].legend()
    figure.tight_layout()
    figure.savefig(RESULTS / "bridge.png", dpi=100)
    return table


class Paths:
    """
    How to open a connection on each path: a bridge through the gateway, or the direct echo.
    """

    def __init__(self, bridge_url: str, token: str, direct_url: str) -> None:
        self.bridge_url, self.token, self.direct_url = bridge_url, token, direct_url

    async def bridges(self, count: int) -> tuple[list[MeasuringClient], list[str]]:
        """
        Open C{count} bridges, each with its own stream; return them and their stream ids.
        """
        clients, streams = [], []
        for index in range(count):
            client = await connect(self.bridge_url, {"Authorization": f"Bearer {self.token}"})
            stream = f"bench-{index}-{secrets.token_hex(4)}"
            client.sendMessage(relayframe.resume_frame(stream), isBinary=True)
            clients.append(client)
            streams.append(stream)
        return clients, streams

    async def directs(self, count: int) -> list[MeasuringClient]:
        """
        Open C{count} connections to the direct echo.
        """
        return [await connect(self.direct_url) for _ in range(count)]


async def measure_latency(paths: Paths) -> dict[str, float]:
    """
    RTT of 64-byte frames and of 1 MiB messages, one at a time, on both paths.
    """
    (gw,), (stream,) = await paths.bridges(1)
    (direct,) = await paths.directs(1)
    frame = relayframe.data_frame(stream, 0, b"x" * 64)
    await round_trips(gw, frame, 200)  # warm-up
    await round_trips(direct, frame, 200)
    gw_rtt = await round_trips(gw, frame, RTT_COUNT)
    direct_rtt = await round_trips(direct, frame, RTT_COUNT)
    large = relayframe.data_frame(stream, 0, os.urandom(LARGE_MESSAGE))
    return {
        "rtt_gw_p50": statistics.median(gw_rtt),
        "rtt_gw_p99": percentile(gw_rtt, 0.99),
        "rtt_direct_p50": statistics.median(direct_rtt),
        "rtt_direct_p99": percentile(direct_rtt, 0.99),
        "large_gw_p99": percentile(await round_trips(gw, large, LARGE_COUNT), 0.99),
        "large_direct_p99": percentile(await round_trips(direct, large, LARGE_COUNT), 0.99),
    }


async def measure_throughput(paths: Paths) -> dict[str, float]:
    """
    Message rate (1 KiB, 20 streams × 16 in flight) and bulk (64 KiB frames) on both paths.
    """
    gws, streams = await paths.bridges(RATE_STREAMS)
    directs = await paths.directs(RATE_STREAMS)
    frames = [relayframe.data_frame(s, 0, b"m" * 1024) for s in streams]
    total = RATE_STREAMS * RATE_PER_STREAM
    big = relayframe.data_frame(streams[0], 0, os.urandom(BULK_FRAME))
    count = BULK_TOTAL // BULK_FRAME
    gib = BULK_TOTAL / (1 << 30)
    return {
        "rate_gw": total / await windowed(gws, frames, RATE_PER_STREAM, RATE_WINDOW),
        "rate_direct": total / await windowed(directs, frames, RATE_PER_STREAM, RATE_WINDOW),
        "bulk_gw": gib / await windowed(gws[:1], [big], count, BULK_WINDOW),
        "bulk_direct": gib / await windowed(directs[:1], [big], count, BULK_WINDOW),
    }


async def run(_reactor_arg: Any) -> None:
    """
    Run every measurement on both paths and write the results.
    """
    gateway = Gateway()
    processes: list[subprocess.Popen[str]] = []
    try:
        await gateway.wait_listening()
        exe_id, executor_url = await prepare(gateway)
        executor, ready = spawn_echo("executor", executor_url)
        processes.append(executor)
        assert ready == "CONNECTED", ready
        direct_server, line = spawn_echo("serve")
        processes.append(direct_server)
        cap = Secret(gateway.secrets["CXG_CAPTOKEN_HMAC_SECRET"].encode())
        now = int(time.time())
        paths = Paths(
            f"ws://127.0.0.1:{gateway.port}/bridge/{exe_id}",
            tokens.mint_cap_token(cap, "trn_bench", "bench", now, now + 3600),
            f"ws://127.0.0.1:{line.split()[1]}",
        )
        results = await measure_latency(paths) | await measure_throughput(paths)
        print(write_results(results))
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=10)
        gateway.stop()


if __name__ == "__main__":
    react(run)
