"""
End-to-end tests of C{twist codexgw-app} with the real codex 0.169.0 and the fake model provider
(C{app-gateway.md} §13 items 9, 11, 12, 40, 71, 72, 75, 77, 78, 80, 81 and issue 6's list): TUI-style
clients through the gateway, codex processes and homes per workspace, crash respawn, idle reaping
with snapshots to a local directory and to the harness's S3 server, graceful and abrupt gateway
exits.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid
from pathlib import Path
from typing import Any

import treq
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase
from twisted.web.http_headers import Headers

from codexgw.testing.fakemodel import BrokenStream, TextReply
from tests.appgw.appgateway import (
    RPC_SECONDS,
    TURN_SECONDS,
    AppGatewayFixture,
    AppGatewayProcess,
    codex_processes,
    member,
    tarball_names,
)
from tests.codexclient import AppServerConnection, JsonRpcError, alive
from tests.execgw.gateway import bounded, twist_executable
from tests.support import codex_binary, s3_endpoint

#: The exact local-IO refusal of §7.4.
LOCAL_IO_MESSAGE = (
    "This RPC is disabled in the cloud deployment because it would access the shared "
    "codex-app-gateway pod, not your local machine. Use the LLM-driven shell / read_file tools "
    "(they route through your registered executor)."
)


async def run_turn(connection: AppServerConnection, text: str) -> tuple[str, dict[str, object]]:
    """
    Start a thread and one turn on it; return the thread id and the C{turn/completed} params.
    """
    started = await bounded(connection.request("thread/start", {}), RPC_SECONDS, "thread/start")
    thread_id = member(started, "thread", "id")
    turn = await bounded(
        connection.request(
            "turn/start", {"threadId": thread_id, "input": [{"type": "text", "text": text}]}
        ),
        RPC_SECONDS,
        "turn/start",
    )
    turn_id = member(turn, "turn", "id")
    completed = await bounded(
        connection.notification("turn/completed", lambda p: member(p, "turn", "id") == turn_id),
        TURN_SECONDS,
        "turn/completed",
    )
    return thread_id, completed


def agent_texts(connection: AppServerConnection) -> list[str]:
    """
    The texts of every C{agentMessage} item completed on C{connection}.
    """
    texts = []
    for notification in connection.notifications:
        if notification.get("method") != "item/completed":
            continue
        item: Any = member(notification, "params", "item")
        if item.get("type") == "agentMessage":
            texts.append(str(item.get("text", "")))
    return texts


async def upgrade_status(
    gateway: AppGatewayProcess, headers: dict[str, str], path: str = "/"
) -> tuple[int, bytes]:
    """
    Send one websocket upgrade request with C{headers} and return the status and body.
    """
    base = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": "13",
    }
    base.update(headers)
    response = await bounded(
        treq.get(
            gateway.base_url + path,
            headers=Headers({k: [v] for k, v in base.items()}),
            persistent=False,
        ),
        RPC_SECONDS,
        "upgrade",
    )
    body = await bounded(treq.content(response), RPC_SECONDS, "upgrade body")
    return response.code, body


class TUIThroughGatewayTests(TestCase):
    """
    A TUI-style client drives the real codex through one gateway.
    """

    timeout = 180

    async def test_turn_and_pass_through(self) -> None:
        """
        Through C{/}: the TUI handshake, a turn whose agent message is the model's reply and whose
        C{turn/completed} has status C{completed}; the TUI's read-only methods get codex's own
        answers. C{/codex-app/ws} proxies too, to the same process.
        """
        fixture = AppGatewayFixture(self)
        await fixture.start_model()
        fixture.script.enqueue(TextReply("hello through the gateway"))
        gateway = await fixture.start()
        tui = await fixture.connect(gateway, "ws_a")
        _, completed = await run_turn(tui, "say hello")
        self.assertEqual("completed", member(completed, "turn", "status"))
        self.assertIn("hello through the gateway", agent_texts(tui))
        methods: list[tuple[str, dict[str, object]]] = [
            ("account/read", {}),
            ("model/list", {}),
            ("config/read", {}),
            ("thread/list", {}),
            ("skills/list", {}),
            ("thread/loaded/list", {}),
        ]
        for method, params in methods:
            try:
                await bounded(tui.request(method, params), RPC_SECONDS, method)
            except JsonRpcError as e:
                self.assertNotIn("cloud deployment", str(e), method)
        other = await fixture.connect(gateway, "ws_a", "/codex-app/ws")
        await bounded(other.request("thread/list", {}), RPC_SECONDS, "thread/list")
        self.assertEqual(1, len(codex_processes(fixture.tmp_root)))

    async def test_local_io_blocked(self) -> None:
        """
        C{command/exec} and C{fs/readFile} are answered with the exact local-IO error; the command
        never runs.
        """
        fixture = AppGatewayFixture(self)
        await fixture.start_model()
        gateway = await fixture.start()
        tui = await fixture.connect(gateway, "ws_b")
        marker = fixture.base / "must-not-exist"
        for method, params in [
            ("command/exec", {"command": ["touch", str(marker)]}),
            ("fs/readFile", {"path": str(marker)}),
        ]:
            with self.assertRaises(JsonRpcError) as caught:
                await bounded(tui.request(method, params), RPC_SECONDS, method)
            self.assertEqual(-32601, caught.exception.code)
            self.assertEqual(LOCAL_IO_MESSAGE, caught.exception.message)
        self.assertFalse(marker.exists())

    async def test_refused_upgrades(self) -> None:
        """
        No bearer → 401 C{missing Bearer}; a bad token → 401 C{unauthorized}; a valid token with an
        C{Origin} → 403 and nothing is spawned; a plain GET → 400; health and readiness answer.
        """
        fixture = AppGatewayFixture(self)
        await fixture.start_model()
        gateway = await fixture.start()
        self.assertEqual((401, b"missing Bearer\n"), await upgrade_status(gateway, {}))
        self.assertEqual(
            (401, b"unauthorized\n"),
            await upgrade_status(gateway, {"Authorization": "Bearer ws_a.x.00"}),
        )
        self.assertEqual(
            (403, b"origin not allowed\n"),
            await upgrade_status(
                gateway,
                {
                    "Authorization": f"Bearer {fixture.token('ws_a')}",
                    "Origin": "https://evil.example",
                },
            ),
        )
        self.assertEqual({}, codex_processes(fixture.tmp_root))
        response = await treq.get(gateway.base_url + "/", persistent=False)
        self.assertEqual(400, response.code)
        self.assertEqual(b"websocket upgrade required\n", await treq.content(response))
        response = await treq.get(gateway.base_url + "/healthz", persistent=False)
        self.assertEqual((200, b""), (response.code, await treq.content(response)))
        response = await treq.get(gateway.base_url + "/readyz", persistent=False)
        self.assertEqual((200, b"ok\n"), (response.code, await treq.content(response)))


class WorkspaceProcessTests(TestCase):
    """
    One codex per workspace, each with its own home; a crash respawns on the next connection; a
    slow TUI does not stall another TUI of its workspace.
    """

    timeout = 180

    async def test_two_workspaces_two_processes(self) -> None:
        """
        Two workspaces get two codex processes with two CODEX_HOMEs under the tmp root.
        """
        fixture = AppGatewayFixture(self)
        await fixture.start_model()
        gateway = await fixture.start()
        await fixture.connect(gateway, "ws_one")
        await fixture.connect(gateway, "ws_two")
        homes = sorted(codex_processes(fixture.tmp_root).values())
        self.assertEqual([str(fixture.tmp_root / "ws_one"), str(fixture.tmp_root / "ws_two")], homes)

    async def test_crash_respawns(self) -> None:
        """
        SIGKILL of the workspace's codex closes its TUI with 1011; the next connection gets a new
        process.
        """
        fixture = AppGatewayFixture(self)
        await fixture.start_model()
        gateway = await fixture.start()
        tui = await fixture.connect(gateway, "ws_c")
        (first,) = codex_processes(fixture.tmp_root)
        os.killpg(first, signal.SIGKILL)
        await bounded(tui.closed, RPC_SECONDS, "TUI closed")
        self.assertEqual(1011, tui.close_code)
        await gateway.wait_log("app-server exited unexpectedly")
        again = await fixture.connect(gateway, "ws_c")
        await bounded(again.request("thread/list", {}), RPC_SECONDS, "thread/list")
        (second,) = codex_processes(fixture.tmp_root)
        self.assertNotEqual(first, second)

    async def test_paused_tui_does_not_stall_another(self) -> None:
        """
        One TUI stops reading; another TUI of the same workspace completes a turn.
        """
        fixture = AppGatewayFixture(self)
        await fixture.start_model()
        fixture.script.enqueue(TextReply("still flowing"))
        gateway = await fixture.start()
        slow = await fixture.connect(gateway, "ws_d")
        transport: Any = slow.transport
        transport.pauseProducing()
        fast = await fixture.connect(gateway, "ws_d")
        _, completed = await run_turn(fast, "go")
        self.assertEqual("completed", member(completed, "turn", "status"))
        transport.resumeProducing()


async def write_marker(fixture: AppGatewayFixture, workspace_id: str, text: str) -> None:
    """
    Write C{marker.txt} into the workspace's live home.
    """
    (fixture.tmp_root / workspace_id / "marker.txt").write_text(text)


class SnapshotLifecycleTests(TestCase):
    """
    Homes are saved when app-servers stop (idle, shutdown) and restored on the next spawn.
    """

    timeout = 240

    async def _idle_round_trip(self, extra: dict[str, str], stored: Path | None) -> None:
        fixture = AppGatewayFixture(self)
        await fixture.start_model()
        gateway = await fixture.start({"CXG_IDLE_SHUTDOWN": "2s", **extra})
        tui = await fixture.connect(gateway, "ws_idle")
        await write_marker(fixture, "ws_idle", "kept across spawns")
        await gateway.wait_log("CODEX_HOME uploaded", 30)
        await bounded(tui.closed, RPC_SECONDS, "TUI closed by the reaper")
        self.assertEqual((1001, "app-server stopped"), (tui.close_code, tui.close_reason))
        self.assertFalse((fixture.tmp_root / "ws_idle").exists())
        if stored is not None:
            self.assertIn(
                "./marker.txt", [n if n.startswith("./") else "./" + n for n in tarball_names(stored)]
            )
        again = await fixture.connect(gateway, "ws_idle")
        await bounded(again.request("thread/list", {}), RPC_SECONDS, "thread/list")
        self.assertEqual("kept across spawns", (fixture.tmp_root / "ws_idle" / "marker.txt").read_text())

    async def test_idle_reap_local_directory(self) -> None:
        """
        With C{CXG_IDLE_SHUTDOWN=2s} the idle codex is stopped, its TUI closed with 1001
        C{app-server stopped}, the home uploaded to the object directory, and the next connection
        restores the marker.
        """
        fixture_objects = Path(self.mktemp()).absolute()
        await self._idle_round_trip(
            {"CXG_OBJECT_DIR": str(fixture_objects)},
            fixture_objects / "codex-app-gateway" / "ws_idle.tar.gz",
        )

    async def test_idle_reap_s3(self) -> None:
        """
        The same round trip with the object store on the harness's S3 server.
        """
        bucket = f"cxg-it-{uuid.uuid4().hex[:12]}"
        create_bucket(bucket)
        await self._idle_round_trip(
            {
                "CXG_S3_ENDPOINT": s3_endpoint(),
                "CXG_S3_BUCKET": bucket,
                "CXG_S3_ACCESS_KEY_ID": "testing",
                "CXG_S3_SECRET_ACCESS_KEY": "testing",
                "CXG_S3_PATH_STYLE": "true",
            },
            None,
        )
        self.assertIn("codex-app-gateway/ws_idle.tar.gz", list_keys(bucket))

    async def test_sigterm_snapshots_every_workspace(self) -> None:
        """
        SIGTERM with three live app-servers: all exit, three tarballs are written, no codex is
        left, the gateway exits 0 within 30 s; a marker survives into the tarball.
        """
        fixture = AppGatewayFixture(self)
        await fixture.start_model()
        gateway = await fixture.start()
        for workspace_id in ("ws_1", "ws_2", "ws_3"):
            await fixture.connect(gateway, workspace_id)
        await write_marker(fixture, "ws_2", "saved on shutdown")
        self.assertEqual(3, len(codex_processes(fixture.tmp_root)))
        self.assertEqual(0, await gateway.stop(timeout=30))
        self.assertEqual({}, codex_processes(fixture.tmp_root))
        stored = fixture.objects / "codex-app-gateway"
        self.assertEqual(
            ["ws_1.tar.gz", "ws_2.tar.gz", "ws_3.tar.gz"], sorted(p.name for p in stored.iterdir())
        )
        self.assertTrue(any(n.endswith("marker.txt") for n in tarball_names(stored / "ws_2.tar.gz")))

    async def test_sigkill_then_restart_recovers(self) -> None:
        """
        A gateway killed with SIGKILL leaves its codex behind; the next gateway on the same root
        kills it before listening and uploads its home (the marker reaches the store). A second
        gateway on a root in use exits 1 with the lock message.
        """
        fixture = AppGatewayFixture(self)
        await fixture.start_model()
        first = await fixture.start()
        await fixture.connect(first, "ws_orphan")
        await write_marker(fixture, "ws_orphan", "recovered")
        (orphan,) = codex_processes(fixture.tmp_root)
        second = AppGatewayProcess(fixture.env(), fixture.base / "cwd2", args=())
        fixture.processes.append(second)
        second.spawn()
        self.assertEqual(1, await second.exited(30))
        self.assertIn("is in use by another codexgw-app process", second.output)
        first.kill()
        await first.exited(30)
        self.assertTrue(alive(orphan))
        third = await fixture.start()
        self.assertFalse(alive(orphan))
        await third.wait_log("CODEX_HOME uploaded", 30)
        stored = fixture.objects / "codex-app-gateway" / "ws_orphan.tar.gz"
        self.assertTrue(any(n.endswith("marker.txt") for n in tarball_names(stored)))


class ConfigurationExitTests(TestCase):
    """
    A configuration failure ends C{twist codexgw-app} with status 64 and C{config: …}.
    """

    def test_missing_exec_gateway_url(self) -> None:
        """
        Without C{CXG_EXEC_GATEWAY_URL}: exit 64, stderr names the variable.
        """
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": self.mktemp(),
            "CXG_CODEX_BIN": str(codex_binary()),
        }
        result = subprocess.run(
            [twist_executable(), "codexgw-app"], env=env, capture_output=True, timeout=60
        )
        self.assertEqual(64, result.returncode)
        self.assertIn(b"config: CXG_EXEC_GATEWAY_URL is required", result.stderr)


def _s3_client() -> object:
    import botocore.session  # noqa: PLC0415 - only the S3 test needs it

    session = botocore.session.get_session()
    return session.create_client(
        "s3",
        endpoint_url=s3_endpoint(),
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def create_bucket(bucket: str) -> None:
    """
    Create C{bucket} on the harness's S3 server.
    """
    _s3_client().create_bucket(Bucket=bucket)  # type: ignore[attr-defined]


def list_keys(bucket: str) -> list[str]:
    """
    The keys in C{bucket}.
    """
    listed = _s3_client().list_objects_v2(Bucket=bucket)  # type: ignore[attr-defined]
    return [item["Key"] for item in listed.get("Contents", [])]


TURN_SECRET = "integration-turn-api-secret-0123456789abc"


def release_once(release: Deferred[None]) -> None:
    """
    Let a held model stream end (cleanup), unless it already did.
    """
    if not release.called:
        release.callback(None)


async def post_turn(
    gateway: AppGatewayProcess, body: object, secret: str = TURN_SECRET
) -> tuple[int, Any]:
    """
    C{POST /api/turns} with C{body} (bytes are sent as they are); return the status and the decoded
    JSON body (or the text of a plain-text body).
    """
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = await bounded(
        treq.post(
            gateway.base_url + "/api/turns",
            data=raw,
            headers=Headers({"X-Internal-Secret": [secret]}),
            persistent=False,
        ),
        TURN_SECONDS + 30,
        "POST /api/turns",
    )
    content = await bounded(treq.content(response), RPC_SECONDS, "turn body")
    if response.headers.getRawHeaders(b"content-type", [b""])[0].startswith(b"application/json"):
        return response.code, json.loads(content)
    return response.code, content.decode()


def turn_body(workspace_id: str, text: str, **extra: object) -> dict[str, object]:
    """
    A Turn API request for one text input.
    """
    return {
        "workspaceId": workspace_id,
        "params": {"input": [{"type": "text", "text": text}]},
        **extra,
    }


class TurnAPIIntegrationTests(TestCase):
    """
    C{POST /api/turns} against the real codex (§13 items 73, 75, 76, 79 and issue 7's list).
    """

    timeout = 240

    async def start(self, **extra: str) -> tuple[AppGatewayFixture, AppGatewayProcess]:
        fixture = AppGatewayFixture(self)
        await fixture.start_model()
        gateway = await fixture.start({"CXG_AGENTSERVER_INTERNAL_SECRET": TURN_SECRET, **extra})
        return fixture, gateway

    async def test_new_thread_then_resume_after_pool_expiry(self) -> None:
        """
        A turn without C{threadId} returns the thread and a completed turn holding the agent
        message; after the pool's connection expired, a second turn on that thread succeeds
        (resume). A TUI on the same workspace shares the process.
        """
        fixture, gateway = await self.start(CXG_BROKER_POOL_IDLE_TTL="200ms", CXG_LOG_LEVEL="debug")
        fixture.script.enqueue(TextReply("first answer"), TextReply("second answer"))
        status, answer = await post_turn(gateway, turn_body("ws_t", "one"))
        self.assertEqual(200, status, answer)
        self.assertEqual("completed", member(answer, "turn", "status"))
        texts = [
            i.get("text") for i in member(answer, "turn", "items") if i.get("type") == "agentMessage"
        ]
        self.assertEqual(["first answer"], texts)
        await gateway.wait_log("broker idle", 30)
        status, again = await post_turn(gateway, turn_body("ws_t", "two", threadId=answer["threadId"]))
        self.assertEqual(answer["threadId"], again["threadId"])
        self.assertEqual("completed", member(again, "turn", "status"))
        await fixture.connect(gateway, "ws_t")
        self.assertEqual(1, len(codex_processes(fixture.tmp_root)))

    async def test_timeout_then_next_turn(self) -> None:
        """
        A model stream that never completes → C{brokerTimeout}; the next turn on that thread
        completes (codex was interrupted).
        """
        fixture, gateway = await self.start()
        release: Deferred[None] = Deferred()
        self.addCleanup(release_once, release)
        fixture.script.enqueue(BrokenStream("stuck", release=release), TextReply("after"))
        status, answer = await post_turn(gateway, turn_body("ws_to", "hang", timeoutMs=3000))
        self.assertEqual(200, status)
        self.assertEqual("brokerTimeout", member(answer, "transport", "code"))
        self.assertTrue(member(answer, "transport", "message").startswith("turn timed out (thread="))
        status, after = await post_turn(
            gateway, turn_body("ws_to", "again", threadId=answer["threadId"])
        )
        self.assertEqual("completed", member(after, "turn", "status"), after)

    async def test_crash_mid_turn_then_respawn(self) -> None:
        """
        The app-server killed mid-turn → C{subprocessCrash} or C{wsDisconnect}; the next call spawns
        a new process and completes.
        """
        fixture, gateway = await self.start()
        release: Deferred[None] = Deferred()
        self.addCleanup(release_once, release)
        fixture.script.enqueue(BrokenStream("stuck", release=release), TextReply("recovered"))
        pending = Deferred.fromCoroutine(post_turn(gateway, turn_body("ws_k", "hang")))
        await bounded(fixture.script.model_request(0), TURN_SECONDS, "model request")
        (first,) = codex_processes(fixture.tmp_root)
        os.killpg(first, signal.SIGKILL)
        status, answer = await pending
        self.assertEqual(200, status)
        self.assertIn(member(answer, "transport", "code"), ("subprocessCrash", "wsDisconnect"))
        status, after = await post_turn(gateway, turn_body("ws_k", "again"))
        self.assertEqual("completed", member(after, "turn", "status"), after)
        (second,) = codex_processes(fixture.tmp_root)
        self.assertNotEqual(first, second)

    async def test_bad_requests(self) -> None:
        """
        Bad JSON, missing workspaceId, missing params → 400 texts; a wrong secret → 401.
        """
        _, gateway = await self.start()
        self.assertEqual(
            (400, "invalid json: body must be a JSON object\n"), await post_turn(gateway, b"[1]")
        )
        self.assertEqual((400, "workspaceId required\n"), await post_turn(gateway, {"params": {}}))
        self.assertEqual((400, "params required\n"), await post_turn(gateway, {"workspaceId": "ws_x"}))
        self.assertEqual(
            (401, "unauthorized\n"), await post_turn(gateway, turn_body("ws_x", "t"), "wrong")
        )

    async def test_spawn_storm(self) -> None:
        """
        Eight workspaces at once with spawn concurrency 4: every turn completes; no
        C{database is locked} anywhere in the log.
        """
        fixture, gateway = await self.start(CXG_SPAWN_CONCURRENCY="4")
        fixture.script.enqueue(*[TextReply(f"storm {i}") for i in range(8)])
        answers = [
            Deferred.fromCoroutine(post_turn(gateway, turn_body(f"ws_s{i}", "go"))) for i in range(8)
        ]
        for d in answers:
            _, answer = await d
            self.assertEqual("completed", member(answer, "turn", "status"), answer)
        self.assertNotIn("database is locked", gateway.output)

    async def test_idle_reap_restore_resume(self) -> None:
        """
        With C{CXG_IDLE_SHUTDOWN=2s}: after a turn a marker is written into the home; after the
        reap the stored tarball holds it; the next request respawns, the marker is back, and the
        old thread resumes.
        """
        fixture, gateway = await self.start(CXG_IDLE_SHUTDOWN="2s")
        fixture.script.enqueue(TextReply("before"), TextReply("after"))
        _, answer = await post_turn(gateway, turn_body("ws_r", "one"))
        await write_marker(fixture, "ws_r", "restored")
        await gateway.wait_log("CODEX_HOME uploaded", 30)
        stored = fixture.objects / "codex-app-gateway" / "ws_r.tar.gz"
        self.assertTrue(any(n.endswith("marker.txt") for n in tarball_names(stored)))
        _, again = await post_turn(gateway, turn_body("ws_r", "two", threadId=answer["threadId"]))
        self.assertEqual("completed", member(again, "turn", "status"), again)
        self.assertEqual("restored", (fixture.tmp_root / "ws_r" / "marker.txt").read_text())
