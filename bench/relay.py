"""
Byte relay benchmark (C{delivery.md} §6; C{exec-gateway.md} §4.7, §9.5): 1 GiB PUT → GET through the
real C{twist codexgw-exec}, against a direct local HTTP copy of the same size, in the same run.

Processes: this driver; the gateway; the two curl clients of each transfer (C{curl -T} uploading,
C{curl -o /dev/null} downloading, as executors run them for C{copy_path}); for the baseline, a tiny
Twisted web server (this module's C{serve} mode, the same HTTP stack as the gateway) streaming the same
number of bytes to the same curl downloader. The clients are curl, not Python, so neither path is
limited by its client. Measured, over 3 rounds in which the paths take turns:

 - throughput: bytes / wall time from starting the clients to both exiting (median of the rounds),
   for an upload with C{Content-Length} (a sparse file, C{Expect: 100-continue} as curl sends it above
   1 MiB) and a chunked upload (C{curl -T -} from a pipe), and for the direct copy;
 - the gateway's resident memory (C{VmRSS} from C{/proc}, sampled every 10 ms) during each relay
   transfer: its growth over the value just before the transfer (the relay's bound is 2 MiB per
   relay, §9.1; the integration test holds 256 MiB under 32 MiB of growth), with the direct server's
   growth for comparison;
 - the gateway's CPU time per GiB relayed (C{utime + stime} from C{/proc/<pid>/stat}).

Results go to C{bench/results/relay.md}, C{.json} and C{.png}. Run it with C{make bench} or
C{python -m bench.relay}; C{python -m bench.relay serve <bytes>} is the direct server.
"""

# Twisted's reactor and web APIs are untyped.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import http.client
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
SIZE = 1 << 30
ROUNDS = 3
SAMPLE_INTERVAL = 0.01
PIECE = 64 * 1024
#: Longest a single transfer may take before the benchmark gives up.
TRANSFER_LIMIT = 300.0
GIB = float(1 << 30)
MIB = float(1 << 20)


# -------------------------------------------------------------------------------------------------
# The direct server (a subprocess)


def serve(size: int) -> None:
    """
    Serve C{GET /} with C{size} bytes, chunked, written as fast as the transport takes them (a push
    producer paused and resumed by the transport), on an ephemeral port printed as C{LISTENING <port>}.
    """
    from twisted.internet import reactor  # noqa: PLC0415 (only the server process runs a reactor)
    from twisted.internet.interfaces import IPushProducer  # noqa: PLC0415
    from twisted.web.resource import Resource  # noqa: PLC0415
    from twisted.web.server import NOT_DONE_YET, Site  # noqa: PLC0415
    from zope.interface import implementer  # noqa: PLC0415

    block = os.urandom(PIECE)

    @implementer(IPushProducer)
    class Stream:
        """
        One response's bytes, written while the transport takes them.
        """

        def __init__(self, request: Any) -> None:
            self.request, self.left, self.paused = request, size, False

        def resumeProducing(self) -> None:
            """
            Write until the transport is full or everything was written.
            """
            self.paused = False
            while not self.paused and self.left > 0:
                piece = block[: min(PIECE, self.left)]
                self.left -= len(piece)
                self.request.write(piece)
            if self.left <= 0 and not self.paused:
                self.finish()

        def finish(self) -> None:
            """
            End the response.
            """
            if self.request is not None:
                request, self.request = self.request, None
                request.unregisterProducer()
                request.finish()

        def pauseProducing(self) -> None:
            """
            The transport is full.
            """
            self.paused = True

        def stopProducing(self) -> None:
            """
            The connection is gone.
            """
            self.left = 0

    class Root(Resource):
        """
        C{GET /}: the stream.
        """

        isLeaf = True

        def render_GET(self, request: Any) -> Any:
            """
            Start streaming.
            """
            request.setHeader(b"Content-Type", b"application/octet-stream")
            stream = Stream(request)
            request.registerProducer(stream, True)
            stream.resumeProducing()
            return NOT_DONE_YET

    site: Any = Site(Root())
    port: Any = reactor.listenTCP(0, site, interface="127.0.0.1")
    print(f"LISTENING {port.getHost().port}", flush=True)
    reactor.run()


# -------------------------------------------------------------------------------------------------
# Processes and measurements


def rss(pid: int) -> int:
    """
    Resident set size of C{pid} in bytes.
    """
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid: int) -> float:
    """
    User plus system CPU time of C{pid}.
    """
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


class Gateway:
    """
    The real C{twist codexgw-exec} with the relay enabled, in a temporary directory.
    """

    def __init__(self, directory: Path) -> None:
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
            "CXG_PUBLIC_HTTPS_BASE_URL": "http://127.0.0.1",
            "CXG_PING_INTERVAL": "0",
        }
        self.log = directory / "gateway.log"
        twist = Path(sys.executable).parent / "twist"
        # CXG_BENCH_PROFILE=<file> runs the gateway under cProfile and writes its stats there.
        profile = os.environ.get("CXG_BENCH_PROFILE")
        runner = [str(twist)]
        if profile:
            runner = [sys.executable, "-m", "cProfile", "-o", profile, *runner]
        self.process = subprocess.Popen(
            [*runner, "--log-format=json", f"--log-file={self.log}", "codexgw-exec",
             "--listen", "tcp:0:interface=127.0.0.1"],
            cwd=directory, env=env, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        self.port = self._wait_listening()
        self.base = f"http://127.0.0.1:{self.port}"

    def _wait_listening(self) -> int:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.log.exists():
                for line in self.log.read_text().splitlines():
                    record = json.loads(line.lstrip("\x1e") or "{}")
                    if record.get("event") == "exec_gateway.started":
                        return int(record["port"])
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError("the gateway did not start")

    def call(self, method: str, path: str, headers: dict[str, str], body: object) -> Any:
        """
        One JSON API call; the parsed answer.
        """
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request(method, path, json.dumps(body).encode(), headers)
            response = connection.getresponse()
            return json.loads(response.read() or b"null")
        finally:
            connection.close()

    def prepare(self) -> dict[str, str]:
        """
        Register and bind two executors; return the fields of a relay create.
        """
        admin = {"X-Internal-Secret": self.secrets["CXG_AGENTSERVER_INTERNAL_SECRET"], "X-User-Id": "b"}
        ids = []
        for name in ("src", "dst"):
            exe_id = self.call("POST", "/api/codex-exec/register", admin, {})["exe_id"]
            self.call(
                "POST",
                "/api/codex-exec/workspaces/bench/executors",
                admin,
                {"exe_id": exe_id, "name": name},
            )
            ids.append(exe_id)
        return {"workspace_id": "bench", "source_exe_id": ids[0], "dest_exe_id": ids[1]}

    def ticket(self, fields: dict[str, str]) -> str:
        """
        A new relay ticket.
        """
        secret = self.secrets["CXG_INTERNAL_SHARED_SECRET"]
        grant = self.call(
            "POST",
            "/api/exec-gateway/relay/create",
            {"Authorization": f"Bearer {secret}"},
            {**fields, "ttl_seconds": 600},
        )
        ticket: str = grant["ticket"]
        return ticket

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


def run_clients(commands: list[list[str] | str], watched: int) -> tuple[float, list[bytes], list[int]]:
    """
    Run the client commands at once (a string is a shell pipeline) while sampling C{watched}'s RSS;
    return the wall time until all exited, their outputs and the RSS samples.
    """
    began = time.monotonic()
    processes = [
        subprocess.Popen(c, shell=isinstance(c, str), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for c in commands
    ]
    samples = [rss(watched)]
    try:
        while any(p.poll() is None for p in processes):
            if time.monotonic() - began > TRANSFER_LIMIT:
                raise RuntimeError("a transfer took too long")
            samples.append(rss(watched))
            time.sleep(SAMPLE_INTERVAL)
        elapsed = time.monotonic() - began
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    outputs = []
    for process in processes:
        out, err = process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"client failed ({process.returncode}): {err.decode(errors='replace')}")
        outputs.append(out)
    samples.append(rss(watched))
    return elapsed, outputs, samples


def relay_round(gateway: Gateway, fields: dict[str, str], source: Path, chunked: bool) -> dict[str, Any]:
    """
    One 1 GiB transfer through the relay.
    """
    ticket = gateway.ticket(fields)
    url = f"{gateway.base}/relay/{ticket}"
    auth = f"Authorization: Bearer {ticket}"
    download = ["curl", "-sS", "-f", "-H", auth, "-o", "/dev/null", "-w", "%{size_download}", url]
    upload: list[str] | str
    if chunked:
        upload = f"head -c {SIZE} /dev/zero | curl -sS -T - -H '{auth}' '{url}'"
    else:
        upload = ["curl", "-sS", "-T", str(source), "-H", auth, url]
    cpu_before = cpu_seconds(gateway.process.pid)
    elapsed, (downloaded, answer), samples = run_clients([download, upload], gateway.process.pid)
    cpu = cpu_seconds(gateway.process.pid) - cpu_before
    if int(downloaded) != SIZE or json.loads(answer) != {"bytes": SIZE, "status": "ok"}:
        raise RuntimeError(f"relay transfer incomplete: {downloaded!r} {answer!r}")
    return {
        "seconds": elapsed,
        "gib_s": SIZE / GIB / elapsed,
        "rss_before": samples[0],
        "rss_peak": max(samples),
        "rss_trace": samples,
        "cpu_s_per_gib": cpu / (SIZE / GIB),
    }


def direct_round(port: int, pid: int) -> dict[str, Any]:
    """
    One 1 GiB download straight from the direct server.
    """
    url = f"http://127.0.0.1:{port}/"
    download = ["curl", "-sS", "-f", "-o", "/dev/null", "-w", "%{size_download}", url]
    elapsed, (downloaded,), samples = run_clients([download], pid)
    if int(downloaded) != SIZE:
        raise RuntimeError(f"direct transfer incomplete: {downloaded!r}")
    return {
        "seconds": elapsed,
        "gib_s": SIZE / GIB / elapsed,
        "rss_before": samples[0],
        "rss_peak": max(samples),
    }


def summarize(rounds: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """
    Medians and worst cases of the rounds.
    """
    result: dict[str, Any] = {"size_bytes": SIZE, "rounds": ROUNDS}
    for path, samples in rounds.items():
        result[f"{path}_gib_s"] = statistics.median(s["gib_s"] for s in samples)
        result[f"{path}_rss_growth_mib"] = max(s["rss_peak"] - s["rss_before"] for s in samples) / MIB
        result[f"{path}_rss_before_mib"] = samples[0]["rss_before"] / MIB
        if "cpu_s_per_gib" in samples[0]:
            result[f"{path}_cpu_s_per_gib"] = statistics.median(s["cpu_s_per_gib"] for s in samples)
    result["relay_vs_direct"] = result["relay_gib_s"] / result["direct_gib_s"]
    result["chunked_vs_direct"] = result["chunked_gib_s"] / result["direct_gib_s"]
    result["relay_rss_trace_mib"] = [v / MIB for v in rounds["relay"][-1]["rss_trace"]]
    result["relay_rss_trace_interval_s"] = SAMPLE_INTERVAL
    return result


def write_results(r: dict[str, Any]) -> str:
    """
    Write the Markdown table, the JSON and the PNG chart; return the table.
    """
    RESULTS.mkdir(exist_ok=True)
    rows = [
        ("throughput, upload with Content-Length", f"{r['relay_gib_s']:.2f} GiB/s",
         f"{r['direct_gib_s']:.2f} GiB/s", f"{r['relay_vs_direct']:.0%}"),
        ("throughput, chunked upload", f"{r['chunked_gib_s']:.2f} GiB/s",
         f"{r['direct_gib_s']:.2f} GiB/s", f"{r['chunked_vs_direct']:.0%}"),
        ("RSS growth during a transfer (worst round)",
         f"+{max(r['relay_rss_growth_mib'], r['chunked_rss_growth_mib']):.1f} MiB "
         f"(from {r['relay_rss_before_mib']:.0f} MiB)",
         f"+{r['direct_rss_growth_mib']:.1f} MiB (from {r['direct_rss_before_mib']:.0f} MiB)",
         "bound: ≤ 2 MiB per relay"),
        ("gateway CPU per GiB relayed", f"{r['relay_cpu_s_per_gib']:.2f} s "
         f"(chunked {r['chunked_cpu_s_per_gib']:.2f} s)", "—", "—"),
    ]  # fmt: skip
    lines = [
        "# Byte relay benchmark",
        "",
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {os.cpu_count()} cores: 1 GiB "
        "`curl -T` → `PUT /relay/<ticket>` → `GET` → `curl -o /dev/null` through the gateway, against "
        "`curl` downloading 1 GiB directly from a Twisted web server; median of "
        f"{ROUNDS} rounds, the paths taking turns. All processes on 127.0.0.1.",
        "",
        "| measure | codexgw relay | direct | relay vs direct |",
        "|---|---|---|---|",
        *(f"| {' | '.join(row)} |" for row in rows),
        "",
    ]
    table = "\n".join(lines)
    (RESULTS / "relay.md").write_text(table)
    (RESULTS / "relay.json").write_text(json.dumps(r, indent=2) + "\n")
    import matplotlib  # noqa: PLC0415 (only `make bench` installs it)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    figure, (speed, memory) = plt.subplots(1, 2, figsize=(11, 3.8))
    labels = ["direct", "relay\n(Content-Length)", "relay\n(chunked)"]
    speed.bar(labels, [r["direct_gib_s"], r["relay_gib_s"], r["chunked_gib_s"]])
    speed.set_title("1 GiB copy throughput (GiB/s)")
    trace = r["relay_rss_trace_mib"]
    memory.plot([i * SAMPLE_INTERVAL for i in range(len(trace))], trace)
    memory.set_ylim(0, max(trace) * 1.3)
    memory.set_title("gateway RSS during a relay transfer (MiB)")
    memory.set_xlabel("seconds")
    figure.tight_layout()
    figure.savefig(RESULTS / "relay.png", dpi=100)
    return table


def main() -> None:
    """
    Run both paths and write the results.
    """
    if shutil.which("curl") is None:
        raise SystemExit("bench.relay needs curl")
    directory = Path(tempfile.mkdtemp(prefix="codexgw-bench-relay-"))
    gateway = Gateway(directory)
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.relay", "serve", str(SIZE)],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert server.stdout is not None
        direct_port = int(server.stdout.readline().split()[1])
        fields = gateway.prepare()
        source = directory / "source.bin"
        with source.open("wb") as f:
            f.truncate(SIZE)  # sparse: curl reads it at memory speed
        rounds: dict[str, list[dict[str, Any]]] = {"relay": [], "chunked": [], "direct": []}
        relay_round(gateway, fields, source, chunked=False)  # warm-up
        for _ in range(ROUNDS):
            rounds["direct"].append(direct_round(direct_port, server.pid))
            rounds["relay"].append(relay_round(gateway, fields, source, chunked=False))
            rounds["chunked"].append(relay_round(gateway, fields, source, chunked=True))
        print(write_results(summarize(rounds)))
    finally:
        server.terminate()
        server.wait(timeout=10)
        gateway.stop()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        serve(int(sys.argv[2]))
    else:
        main()
