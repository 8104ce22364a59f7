"""
Test support for integration tests of the executor: the real C{twist codexgw-executor} as a
subprocess, and a JSON-RPC client of one bridge stream.

The exec gateway side is the exec gateway's own test support (L{tests.execgw.gateway}): its process
runner, websocket clients and HTTP helpers are imported, not copied. L{ExecutorProcess} is that
process runner pointed at the executor's plugin; its JSON log events (C{executor.connected},
C{executor.stream_opened} with the exec-server's pid, …) are what the tests wait on.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from codexgw import relayframe
from codexgw.executor.proctree import ProcessInfo, descendants
from tests.execgw.gateway import WAIT, BridgeClient, GatewayProcess
from tests.executor.proctools import alive, process_table
from tests.support import codex_binary

#: How long an executor may take to connect after its start.
CONNECT_TIMEOUT = 20.0


class ExecutorProcess(GatewayProcess):
    """
    One C{twist codexgw-executor} process (see L{GatewayProcess} for output collection and stopping).
    """

    plugin = "codexgw-executor"

    async def start(self, timeout: float = CONNECT_TIMEOUT) -> int:
        """
        Spawn and wait until it is connected to its gateway; return its pid.
        """
        self.spawn()
        try:
            await self.wait_event("executor.connected", timeout)
        except BaseException:
            self.kill()
            raise
        return self.pid


def executor_env(token: str | None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """
    A clean environment for an executor: no inherited C{CXG_*} variables, the registration token in
    C{CXG_EXECUTOR_TOKEN} (unless C{None}), and C{extra}.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if key in ("PATH", "LANG", "LC_ALL", "TZ", "TMPDIR")
    }
    env["PYTHONUNBUFFERED"] = "1"
    if token is not None:
        env["CXG_EXECUTOR_TOKEN"] = token
    env.update(extra or {})
    return env


def executor_args(gateway_url: str, exe_id: str, state_dir: Path) -> list[str]:
    """
    The executor's command line for the pinned codex and a private state dir.
    """
    return [
        "--gateway",
        gateway_url,
        "--executor-id",
        exe_id,
        "--codex-bin",
        str(codex_binary()),
        "--state-dir",
        str(state_dir.absolute()),
    ]


class StreamReset(AssertionError):
    """
    The stream was reset while a call waited.
    """


class RpcStream:
    """
    JSON-RPC over one bridge stream, as envtools speaks it: Data with C{seq} from 0, segments of
    1 MiB on the way out, reassembly on the way in.

    @ivar notifications: every notification received so far.
    @ivar segmented: how many messages arrived in more than one segment.
    """

    def __init__(self, bridge: BridgeClient, stream_id: str) -> None:
        self.bridge = bridge
        self.stream_id = stream_id
        self.notifications: list[dict[str, Any]] = []
        self.segmented = 0
        self._seq = 0
        self._id = 0
        self._reassembler = relayframe.Reassembler()

    def send(self, message: dict[str, Any]) -> None:
        """
        Send one JSON-RPC message.
        """
        payload = json.dumps(message, separators=(",", ":")).encode("utf-8")
        for frame in relayframe.data_frames(self.stream_id, self._seq, payload):
            self.bridge.send(frame)
        self._seq += 1

    async def next_message(self, timeout: float = WAIT) -> dict[str, Any]:
        """
        The next whole message of the stream.

        @raise StreamReset: when a Reset arrives instead.
        """
        while True:
            frame = relayframe.decode(await self.bridge.next_frame(timeout))
            body = frame.WhichOneof("body")
            if body == "reset":
                raise StreamReset(frame.reset.reason)
            if body != "data" or frame.stream_id != self.stream_id:
                continue
            data = frame.data
            message = self._reassembler.feed(
                data.seq, data.segment_index, data.segment_count, data.payload
            )
            if message is not None:
                if data.segment_count > 1:
                    self.segmented += 1
                parsed: dict[str, Any] = json.loads(message)
                return parsed

    async def call(self, method: str, params: dict[str, Any], timeout: float = WAIT) -> Any:
        """
        One request; its C{result} (an C{error} fails the call).
        """
        self._id += 1
        request_id = self._id
        self.send({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
        while True:
            message = await self.next_message(timeout)
            if message.get("id") == request_id:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                return message["result"]
            self.notifications.append(message)

    async def open(self) -> dict[str, Any]:
        """
        The handshake: C{initialize} then C{initialized}; the C{initialize} result.
        """
        result: dict[str, Any] = await self.call("initialize", {"clientName": "t"})
        self.send({"jsonrpc": "2.0", "method": "initialized", "params": {}})
        return result

    async def start(self, process_id: str, argv: list[str]) -> None:
        """
        C{process/start} without a terminal or stdin, in C{/tmp}, with this machine's C{PATH}.
        """
        await self.call(
            "process/start",
            {
                "processId": process_id,
                "argv": argv,
                "cwd": "file:///tmp",
                "env": {"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                "tty": False,
                "pipeStdin": False,
                "arg0": None,
            },
        )

    async def run(self, process_id: str, argv: list[str]) -> tuple[bytes, int]:
        """
        Start a process and read it until it exited (the polling rule of C{envtools.md} §2.4);
        return its stdout and exit code.
        """
        await self.start(process_id, argv)
        after: int | None = None
        output = b""
        for _ in range(100):
            read = await self.call(
                "process/read",
                {"processId": process_id, "afterSeq": after, "maxBytes": 65536, "waitMs": 250},
            )
            for chunk in read["chunks"]:
                if chunk["stream"] == "stdout":
                    output += base64.b64decode(chunk["chunk"])
            after = read["nextSeq"] - 1
            if read["exited"] and read["closed"]:
                return output, int(read["exitCode"])
        raise AssertionError(f"{argv} did not finish")


def tree_of(pid: int) -> list[ProcessInfo]:
    """
    C{pid} and everything below it, from C{/proc} now.
    """
    table = process_table()
    root = table.get(pid)
    return ([root] if root is not None else []) + descendants(table, pid)


def group_members(pgid: int) -> list[ProcessInfo]:
    """
    The live processes of a process group, from C{/proc} now.
    """
    return [info for info in process_table().values() if info.pgid == pgid and info.state != "Z"]


def still_alive(processes: list[ProcessInfo]) -> list[ProcessInfo]:
    """
    Those of C{processes} that still run (same pid and start time).
    """
    return [info for info in processes if alive(info)]


def cmdline(pid: int) -> list[str]:
    """
    A process's command line (empty when it is gone).
    """
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode("utf-8", "replace") for part in raw.split(b"\0") if part]


def environ_names(pid: int) -> list[str]:
    """
    The names of a process's environment variables.
    """
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return [item.split(b"=", 1)[0].decode() for item in raw.split(b"\0") if b"=" in item]
