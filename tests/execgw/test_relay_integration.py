"""
Integration tests of the byte relay: the real C{twist codexgw-exec} as a subprocess on 127.0.0.1, raw
HTTP/1.1 clients over real sockets, and curl (C{exec-gateway.md} §4.6, §4.7, §9.5; acceptance items
60–71).

The shared gateway runs with C{CXG_RELAY_DEFAULT_TTL=2ms}: tests that want a usable ticket ask for a
TTL of their own (C{ttl_seconds}), and the race trials of item 71 use the 2 ms default. Executors are
registered and bound per test (they need not be connected for the ownership checks). The clients here
stream their bodies with back-pressure and hash what they send and receive, so transfers of 64 and
256 MiB are checked byte for byte without keeping them in memory; the gateway's memory is read from
C{/proc/<pid>/status} while a transfer runs. Every wait is bounded; the gateway is stopped by pid.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import LoopingCall, deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, TestCase
from zope.interface import implementer

from tests.execgw.gateway import (
    SHARED_SECRET,
    GatewayHTTP,
    GatewayProcess,
    Reply,
    SharedGateway,
    bounded,
    reactor,
)

KIB = 1 << 10
MIB = 1 << 20
#: The shared gateway: relay on, 2 ms default TTL (item 71); other tests pass their own TTL.
RELAY_ENV = {
    "CXG_PUBLIC_HTTPS_BASE_URL": "http://relay.invalid/",
    "CXG_RELAY_DEFAULT_TTL": "2ms",
}
#: The TTL tests ask for when they do not test expiry.
TTL = 120
#: How much the gateway's resident memory may grow while it relays 256 MiB (item 70).
RSS_GROWTH_LIMIT = 32 * MIB
#: Piece size of the clients' uploads.
PIECE = 64 * KIB


def unique(prefix: str) -> str:
    """
    A name no other test uses.
    """
    return f"{prefix}_{os.urandom(5).hex()}"


def rss_bytes(pid: int) -> int:
    """
    The resident set size of process C{pid} (C{VmRSS}).
    """
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * KIB
    raise AssertionError(f"no VmRSS for {pid}")


# -------------------------------------------------------------------------------------------------
# A raw HTTP/1.1 client


class PatternBody:
    """
    C{total} bytes of upload, made piece by piece (each piece starts with its index, so a lost,
    repeated or reordered piece changes the hash), hashed as they are made.
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self.made = 0
        self.sha = hashlib.sha256()
        self._pool = [os.urandom(PIECE) for _ in range(8)]
        self._index = 0

    def next_piece(self) -> bytes | None:
        """
        The next piece, or C{None} at the end.
        """
        left = self.total - self.made
        if left <= 0:
            return None
        piece = struct.pack(">Q", self._index) + self._pool[self._index % 8][8:]
        piece = piece[: min(PIECE, left)]
        self._index += 1
        self.made += len(piece)
        self.sha.update(piece)
        return piece


@dataclass
class Received:
    """
    A response as a raw client read it.

    @ivar interim: the statuses of 1xx responses before it.
    @ivar complete: whether the body ended properly (final chunk, or all of C{Content-Length}).
    @ivar body: the body, when the client kept it.
    """

    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    interim: list[int] = field(default_factory=list)
    body: bytes = b""
    length: int = 0
    sha256: str = ""
    complete: bool = False

    @property
    def json(self) -> Any:
        """
        The body as JSON.
        """
        return json.loads(self.body)


@implementer(IPushProducer)
class RawHTTP(Protocol):
    """
    One request on its own connection: the head, then (optionally) a body streamed with the
    transport's back-pressure, chunked or with a length, after C{100 Continue} when it expects one.

    @ivar done: fires with L{Received} when the response is complete or the connection ended.
    """

    def __init__(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        body: PatternBody | bytes | None = None,
        *,
        chunked: bool = False,
        expect: bool = False,
        keep: bool = True,
        abort_after: int | None = None,
        held: bool = False,
    ) -> None:
        """
        @param held: connect without sending; L{send} sends the request later.
        """
        self.method, self.path, self.headers = method, path, headers
        self.source = PatternBody(len(body)) if isinstance(body, bytes) else body
        self._literal = body if isinstance(body, bytes) else None
        self.chunked, self.expect, self.keep, self.abort_after = chunked, expect, keep, abort_after
        self.held = held
        self.done: Deferred[Received] = Deferred()
        self.received = Received()
        self._sha = hashlib.sha256()
        self._buffer = bytearray()
        self._state = "head"
        self._remaining = 0
        self._sending = False
        self._paused = False
        self._kept = bytearray()

    # sending

    @property
    def _transport(self) -> Any:
        return self.transport

    def connectionMade(self) -> None:
        """
        Send the request, unless it is held.
        """
        if not self.held:
            self.send()

    def send(self, path: str | None = None, headers: dict[str, str] | None = None) -> None:
        """
        Send the head (with C{path} and C{headers} if given now); start the body unless it waits for
        C{100 Continue}.
        """
        self.path = path if path is not None else self.path
        self.headers = headers if headers is not None else self.headers
        lines = [f"{self.method} {self.path} HTTP/1.1", "Host: 127.0.0.1"]
        lines += [f"{k}: {v}" for k, v in self.headers.items()]
        if self.source is not None:
            if self.chunked:
                lines.append("Transfer-Encoding: chunked")
            else:
                lines.append(f"Content-Length: {self.source.total}")
            if self.expect:
                lines.append("Expect: 100-continue")
        self._transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        if self.source is not None:
            self._transport.registerProducer(self, True)
            if not self.expect:
                self._start_body()

    def _start_body(self) -> None:
        self._sending = True
        self.resumeProducing()

    def resumeProducing(self) -> None:
        """
        Write body pieces until the transport is full or the body ends.
        """
        self._paused = False
        while self._sending and not self._paused:
            assert self.source is not None
            if self._literal is not None:
                piece: bytes | None = self._literal[self.source.made : self.source.made + PIECE] or None
                if piece is not None:
                    self.source.made += len(piece)
                    self.source.sha.update(piece)
            else:
                piece = self.source.next_piece()
            if piece is None:
                self._stop_body()
                if self.chunked:
                    self._transport.write(b"0\r\n\r\n")
                return
            if self.chunked:
                self._transport.writeSequence([b"%x\r\n" % len(piece), piece, b"\r\n"])
            else:
                self._transport.write(piece)

    def pauseProducing(self) -> None:
        """
        The transport is full.
        """
        self._paused = True

    def stopProducing(self) -> None:
        """
        The connection is going.
        """
        self._sending = False

    def _stop_body(self) -> None:
        if self._sending or self.source is not None:
            self._sending = False
            if self.transport is not None and getattr(self._transport, "producer", None) is self:
                self._transport.unregisterProducer()

    # receiving

    def dataReceived(self, data: bytes) -> None:
        """
        Parse the response as it comes.
        """
        self._buffer += data
        while self._buffer and self._step():
            pass

    def _step(self) -> bool:
        buffer = self._buffer
        if self._state == "head":
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return False
            lines = bytes(buffer[:end]).decode("latin-1").split("\r\n")
            del buffer[: end + 4]
            status = int(lines[0].split(" ")[1])
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            if status < 200:
                self.received.interim.append(status)
                if status == 100 and self.expect and not self._sending:
                    self._start_body()
                return True
            self.received.status, self.received.headers = status, headers
            # A final answer: whatever of the body is not sent yet will not be.
            self._stop_body()
            if headers.get("transfer-encoding") == "chunked":
                self._state = "size"
            else:
                self._remaining = int(headers.get("content-length", "0"))
                self._state = "data" if self._remaining else "end"
                if self._remaining == 0:
                    self._complete()
            return True
        if self._state == "size":
            end = buffer.find(b"\r\n")
            if end < 0:
                return False
            size = int(bytes(buffer[:end]).split(b";")[0], 16)
            del buffer[: end + 2]
            self._state = "chunk" if size else "trailer"
            self._remaining = size
            return True
        if self._state in ("chunk", "data"):
            take = min(self._remaining, len(buffer))
            self._body(bytes(buffer[:take]))
            del buffer[:take]
            self._remaining -= take
            if self._remaining == 0:
                if self._state == "chunk":
                    self._state = "crlf"
                else:
                    self._complete()
            return bool(buffer) and self._state != "end"
        if self._state == "crlf":
            if len(buffer) < 2:
                return False
            del buffer[:2]
            self._state = "size"
            return True
        if self._state == "trailer":
            end = buffer.find(b"\r\n")
            if end < 0:
                return False
            trailer = bytes(buffer[:end])
            del buffer[: end + 2]
            if not trailer:
                self._complete()
            return self._state != "end"
        del buffer[:]
        return False

    def _body(self, data: bytes) -> None:
        self.received.length += len(data)
        self._sha.update(data)
        if self.keep:
            self._kept += data
        if self.abort_after is not None and self.received.length >= self.abort_after:
            self.abort_after = None
            self._transport.abortConnection()

    def _complete(self) -> None:
        self._state = "end"
        self.received.complete = True
        self._finish()
        self._transport.loseConnection()

    def _finish(self) -> None:
        if self.done.called:
            return
        self.received.body = bytes(self._kept)
        self.received.sha256 = self._sha.hexdigest()
        self.done.callback(self.received)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        The end: an incomplete response if it had not completed.
        """
        self._sending = False
        self._finish()


async def open_request(port: int, protocol: RawHTTP) -> RawHTTP:
    """
    Connect C{protocol} to the gateway (it sends its request at once).
    """
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=10)
    await bounded(connectProtocol(endpoint, protocol), 10, "connect")
    return protocol


# -------------------------------------------------------------------------------------------------


class RelayCase(TestCase):
    """
    A shared relay-enabled gateway, an HTTP client, and a workspace with two bound executors per test.
    """

    timeout = 120
    env: ClassVar[dict[str, str]] = RELAY_ENV

    async def setUp(self) -> None:  # type: ignore[override]
        """
        Get the class's gateway; register and bind two executors in a fresh workspace.
        """
        shared = SharedGateway.for_class(
            type(self), "sqlite", self.env, Path(self.mktemp()).parent / "gw"
        )
        self.addCleanup(shared.release)
        self.gateway: GatewayProcess = await shared.acquire()
        assert self.gateway.port is not None
        self.port = self.gateway.port
        self.api = GatewayHTTP(self.gateway.base_url)
        self.addCleanup(self.api.close)
        self.workspace = unique("ws")
        self.source, _ = await self.api.register()
        self.dest, _ = await self.api.register()
        for exe_id, name in ((self.source, "src"), (self.dest, "dst")):
            reply = await self.api.bind(self.workspace, exe_id, name)
            assert reply.status == 201, reply

    async def create(
        self, auth: str | None = SHARED_SECRET, body: bytes | None = None, **fields: object
    ) -> Reply:
        """
        C{POST /api/exec-gateway/relay/create}: this test's workspace and executors, overridden by
        C{fields}, or the raw C{body}.
        """
        values: dict[str, object] = {
            "workspace_id": self.workspace,
            "source_exe_id": self.source,
            "dest_exe_id": self.dest,
        }
        values.update(fields)
        headers = {"Authorization": f"Bearer {auth}"} if auth is not None else {}
        payload = body if body is not None else json.dumps(values).encode()
        return await self.api.request("POST", "/api/exec-gateway/relay/create", headers, payload)

    async def ticket(self, ttl_seconds: int | None = TTL, max_bytes: int | None = None) -> str:
        """
        A new ticket (with the test TTL unless told otherwise).
        """
        fields: dict[str, int] = {}
        if ttl_seconds is not None:
            fields["ttl_seconds"] = ttl_seconds
        if max_bytes is not None:
            fields["max_bytes"] = max_bytes
        reply = await self.create(SHARED_SECRET, None, **fields)
        self.assertEqual(reply.status, 201, reply)
        ticket: str = reply.json["ticket"]
        return ticket

    async def put(
        self, ticket: str, body: PatternBody | bytes, auth: str | None = None, **options: Any
    ) -> RawHTTP:
        """
        Start a PUT of C{ticket}.
        """
        headers = {"Authorization": f"Bearer {ticket if auth is None else auth}"}
        client = RawHTTP("PUT", f"/relay/{ticket}", headers, body, **options)
        return await open_request(self.port, client)

    async def get(self, ticket: str, auth: str | None = None, **options: Any) -> RawHTTP:
        """
        Start a GET of C{ticket}.
        """
        headers = {"Authorization": f"Bearer {ticket if auth is None else auth}"}
        client = RawHTTP("GET", f"/relay/{ticket}", headers, **options)
        return await open_request(self.port, client)

    def answer(self, client: RawHTTP, timeout: float = 30) -> Deferred[Received]:
        """
        The response of C{client}, within C{timeout}.
        """
        return bounded(client.done, timeout, f"{client.method} {client.path}")

    def assertPairing(self, received: Received, status: int, value: dict[str, object]) -> None:
        """
        A complete JSON pairing response: exact body without newline.
        """
        body = json.dumps(value, separators=(",", ":")).encode()
        self.assertEqual((received.status, received.body, received.complete), (status, body, True))
        self.assertEqual(received.headers.get("content-type"), "application/json")

    def assertText(self, received: Received, status: int, message: str) -> None:
        """
        A complete text response.
        """
        self.assertEqual(
            (received.status, received.body, received.complete), (status, message.encode() + b"\n", True)
        )

    async def transfer(
        self, size: int, put_first: bool, **put_options: Any
    ) -> tuple[Received, Received, str]:
        """
        Relay C{size} bytes; return the GET's and the PUT's responses and the sha256 of what was sent.
        """
        ticket = await self.ticket()
        source = PatternBody(size)
        keep = size <= MIB
        if put_first:
            put = await self.put(ticket, source, keep=True, **put_options)
            get = await self.get(ticket, keep=keep)
        else:
            get = await self.get(ticket, keep=keep)
            put = await self.put(ticket, source, keep=True, **put_options)
        got, put_answer = await gatherResults([self.answer(get, 120), self.answer(put, 120)])
        return got, put_answer, source.sha.hexdigest()


class RelayDisabledTests(RelayCase):
    """
    A gateway without C{CXG_PUBLIC_HTTPS_BASE_URL} (item 60).
    """

    env: ClassVar[dict[str, str]] = {}

    async def test_disabled(self) -> None:
        """
        PUT and GET → 404 text; create → 503 JSON.
        """
        message = "relay disabled (no public HTTPS base URL configured)"
        put = await self.put("rly_x", b"data")
        get = await self.get("rly_x")
        self.assertText(await self.answer(put), 404, message)
        self.assertText(await self.answer(get), 404, message)
        reply = await self.create()
        self.assertEqual(
            (reply.status, reply.body),
            (503, b'{"error":"relay not enabled (PublicHTTPSBaseURL unset)"}\n'),
        )


class RelayCreateTests(RelayCase):
    """
    C{relay/create} against the real process (items 61, 62).
    """

    async def test_refusals(self) -> None:
        """
        No auth → 401; bad JSON → 400; missing ids → 400; an executor of another workspace → 403
        naming it.
        """
        self.assertEqual((await self.create(auth=None)).status, 401)
        self.assertEqual((await self.create(auth="wrong")).status, 401)
        reply = await self.create(body=b"[]")
        self.assertEqual((reply.status, reply.json), (400, {"error": "invalid JSON"}))
        reply = await self.create(dest_exe_id="")
        self.assertEqual(
            (reply.status, reply.json),
            (400, {"error": "workspace_id, source_exe_id, dest_exe_id required"}),
        )
        stranger, _ = await self.api.register()
        reply = await self.create(source_exe_id=stranger)
        self.assertEqual(
            (reply.status, reply.json), (403, {"error": f"executor not in workspace: {stranger}"})
        )

    async def test_cap(self) -> None:
        """
        16 active relays in a workspace: the 17th create → 429.
        """
        for _ in range(16):
            await self.ticket()
        reply = await self.create(ttl_seconds=TTL)
        self.assertEqual(
            (reply.status, reply.json), (429, {"error": "relay: workspace concurrent relay cap reached"})
        )
        # The cap is per workspace.
        other = unique("ws")
        for exe_id, name in ((self.source, "src"), (self.dest, "dst")):
            self.assertEqual((await self.api.bind(other, exe_id, name)).status, 201)
        self.assertEqual((await self.create(ttl_seconds=TTL, workspace_id=other)).status, 201)


class RelayTransferTests(RelayCase):
    """
    Transfers through the real process (items 63–69).
    """

    async def test_128k_put_first(self) -> None:
        """
        128 KiB, PUT first: byte-equal, PUT 200 C{{"bytes":131072,"status":"ok"}}.
        """
        got, put, sha = await self.transfer(128 * KIB, put_first=True)
        self.assertEqual((got.status, got.complete, got.length, got.sha256), (200, True, 131072, sha))
        self.assertEqual(got.headers.get("content-type"), "application/octet-stream")
        self.assertEqual(got.headers.get("transfer-encoding"), "chunked")
        self.assertPairing(put, 200, {"bytes": 131072, "status": "ok"})

    async def test_128k_get_first_chunked(self) -> None:
        """
        128 KiB, GET first, the PUT body chunked: byte-equal.
        """
        got, put, sha = await self.transfer(128 * KIB, put_first=False, chunked=True)
        self.assertEqual((got.status, got.complete, got.sha256), (200, True, sha))
        self.assertPairing(put, 200, {"bytes": 131072, "status": "ok"})

    async def test_64m(self) -> None:
        """
        64 MiB with C{Expect: 100-continue}: byte-equal, the 100 came first.
        """
        got, put, sha = await self.transfer(64 * MIB, put_first=True, expect=True)
        self.assertEqual((got.status, got.complete, got.length, got.sha256), (200, True, 64 * MIB, sha))
        self.assertEqual(put.interim, [100])
        self.assertPairing(put, 200, {"bytes": 64 * MIB, "status": "ok"})

    async def test_bearer(self) -> None:
        """
        Only C{Bearer <ticket>} of the URL's ticket passes; an unknown ticket → 410.
        """
        ticket = await self.ticket()
        other = await self.ticket()
        for header in (f"bearer {ticket}", "Bearer ", "", f"Token {ticket}", f"Bearer {other}"):
            for method in ("PUT", "GET"):
                body = b"x" if method == "PUT" else None
                client = RawHTTP(method, f"/relay/{ticket}", {"Authorization": header}, body)
                await open_request(self.port, client)
                self.assertText(await self.answer(client), 401, "unauthorized")
        unknown = "rly_" + "A" * 43
        self.assertText(await self.answer(await self.get(unknown)), 410, "ticket not found or expired")
        # The refused attempts claimed nothing: the ticket still pairs.
        got = await self.get(ticket)
        put = await self.put(ticket, b"still usable")
        self.assertEqual((await self.answer(got)).body, b"still usable")
        self.assertPairing(await self.answer(put), 200, {"bytes": 12, "status": "ok"})

    async def test_second_claims_and_reuse(self) -> None:
        """
        A second PUT (while the first waits) and a second GET (while the first waits) → 423 with the
        exact bodies; the first claims still pair; after completion the ticket → 410.
        """
        put_ticket, get_ticket = await self.ticket(), await self.ticket()
        put = await self.put(put_ticket, PatternBody(4 * MIB), expect=True)
        get = await self.get(get_ticket, keep=False)
        second_put = await self.put(put_ticket, PatternBody(4 * MIB))
        second_get = await self.get(get_ticket)
        self.assertPairing(await self.answer(second_put), 423, {"error": "PUT side already claimed"})
        self.assertPairing(await self.answer(second_get), 423, {"error": "GET side already claimed"})
        put_get = await self.get(put_ticket, keep=False)
        get_put = await self.put(get_ticket, b"abc")
        self.assertEqual((await self.answer(put_get)).length, 4 * MIB)
        self.assertPairing(await self.answer(put), 200, {"bytes": 4 * MIB, "status": "ok"})
        self.assertEqual((await self.answer(get)).length, 3)
        self.assertPairing(await self.answer(get_put), 200, {"bytes": 3, "status": "ok"})
        late = await self.put(put_ticket, b"late")
        self.assertText(await self.answer(late), 410, "ticket not found or expired")

    async def test_expiry(self) -> None:
        """
        A waiting PUT and a waiting GET → 408 at expiry (GET: JSON, no octet stream); then 410.
        """
        put_ticket = await self.ticket(ttl_seconds=1)
        get_ticket = await self.ticket(ttl_seconds=1)
        put = await self.put(put_ticket, PatternBody(8 * MIB), expect=True)
        get = await self.get(get_ticket)
        self.assertPairing(await self.answer(put, 5), 408, {"error": "timed out waiting for GET side"})
        self.assertPairing(await self.answer(get, 5), 408, {"error": "timed out waiting for PUT side"})
        for ticket in (put_ticket, get_ticket):
            self.assertText(
                await self.answer(await self.get(ticket)), 410, "ticket not found or expired"
            )

    async def test_max_bytes(self) -> None:
        """
        C{max_bytes} 1000 and a 2000-byte PUT: the GET sees an incomplete transfer, the PUT 500.
        """
        ticket = await self.ticket(max_bytes=1000)
        get = await self.get(ticket)
        put = await self.put(ticket, b"m" * 2000)
        got = await self.answer(get)
        self.assertEqual(got.status, 200)
        self.assertFalse(got.complete)
        self.assertEqual((got.length, got.body), (1000, b"m" * 1000))
        error = "relay: payload exceeded MaxBytes (2000 > 1000)"
        self.assertPairing(await self.answer(put), 500, {"bytes": 1000, "error": error})

    async def test_get_disconnects(self) -> None:
        """
        The GET client goes away mid-stream: the PUT gets 500 with the bytes written.
        """
        ticket = await self.ticket()
        get = await self.get(ticket, keep=False, abort_after=MIB)
        put = await self.put(ticket, PatternBody(256 * MIB))
        got = await self.answer(get)
        self.assertFalse(got.complete)
        answer = await self.answer(put)
        self.assertEqual((answer.status, answer.complete), (500, True))
        self.assertEqual(list(answer.json), ["bytes", "error"])
        self.assertEqual(answer.json["error"], "relay: download side disconnected")
        self.assertGreaterEqual(answer.json["bytes"], MIB)
        self.assertLess(answer.json["bytes"], 256 * MIB)


class RelayStreamingTests(RelayCase):
    """
    Constant memory and curl end to end (item 70); racing expiry (item 71).
    """

    async def test_256m_constant_memory(self) -> None:
        """
        256 MiB through the relay; the gateway's RSS grows by less than 32 MiB.
        """
        await self.transfer(4 * MIB, put_first=True)  # warm-up: buffers and code paths in use once
        baseline = rss_bytes(self.gateway.pid)
        peak = [baseline]

        def sample() -> None:
            peak[0] = max(peak[0], rss_bytes(self.gateway.pid))

        sampler = LoopingCall(sample)
        sampler.clock = reactor
        sampler.start(0.02)
        try:
            got, put, sha = await self.transfer(256 * MIB, put_first=False)
        finally:
            sampler.stop()
        sample()
        self.assertEqual((got.status, got.complete, got.length, got.sha256), (200, True, 256 * MIB, sha))
        self.assertPairing(put, 200, {"bytes": 256 * MIB, "status": "ok"})
        self.assertLess(peak[0] - baseline, RSS_GROWTH_LIMIT, f"baseline {baseline}, peak {peak[0]}")

    async def test_curl(self) -> None:
        """
        C{curl --upload-file} with C{Expect: 100-continue} and a curl GET, end to end.
        """
        curl = shutil.which("curl")
        if curl is None:
            raise SkipTest("curl is not installed")
        directory = Path(self.mktemp())
        directory.mkdir(parents=True)
        source, target = directory / "src.bin", directory / "dst.bin"
        source.write_bytes(os.urandom(3 * MIB + 17))
        ticket = await self.ticket()
        url = f"{self.gateway.base_url}/relay/{ticket}"
        auth = f"Authorization: Bearer {ticket}"
        download = getProcessOutputAndValue(
            curl, ["-fsS", "-H", auth, "-o", str(target), url], env=os.environ
        )
        upload = getProcessOutputAndValue(
            curl,
            ["-sS", "-v", "--upload-file", str(source), "-H", "Expect: 100-continue", "-H", auth, url],
            env=os.environ,
        )
        (up_out, up_err, up_code), (_, down_err, down_code) = await bounded(
            gatherResults([upload, download]), 60, "curl"
        )
        self.assertEqual((up_code, down_code), (0, 0), (up_err, down_err))
        self.assertIn(b"< HTTP/1.1 100 Continue", up_err)
        self.assertEqual(json.loads(up_out), {"bytes": 3 * MIB + 17, "status": "ok"})
        self.assertEqual(target.read_bytes(), source.read_bytes())

    async def test_expiry_races(self) -> None:
        """
        200 trials with the 2 ms default TTL and racing PUT/GET never hang; every response is 408,
        410 or part of a completed pair.
        """
        outcomes: dict[tuple[int | None, int | None], int] = {}
        for n in range(200):
            outcome = await bounded(Deferred.fromCoroutine(self._race(n)), 30, f"race {n}")
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
        self.assertEqual(sum(outcomes.values()), 200)
        allowed = {408, 410}
        for put_status, get_status in outcomes:
            if put_status == 200 or get_status == 200:
                self.assertEqual((put_status, get_status), (200, 200), outcomes)
            else:
                self.assertIn(put_status, allowed, outcomes)
                self.assertIn(get_status, allowed, outcomes)

    async def _race(self, n: int) -> tuple[int | None, int | None]:
        payload = b"race-%d" % n
        # Both sides are connected before the ticket exists, so their requests follow its creation
        # within a fraction of the 2 ms.
        put = await open_request(self.port, RawHTTP("PUT", "", {}, payload, held=True))
        get = await open_request(self.port, RawHTTP("GET", "", {}, held=True))
        reply = await self.create()
        self.assertEqual(reply.status, 201, reply)
        ticket = reply.json["ticket"]
        # Spread the sides around the expiry: the first after 0–2.1 ms, the second 0–2.1 ms later.
        first, second = (put, get) if n % 2 else (get, put)
        for client, delay in ((first, (n // 2) % 4), (second, (n // 8) % 4)):
            if delay:
                await deferLater(reactor, delay * 0.0007, lambda: None)
            client.send(f"/relay/{ticket}", {"Authorization": f"Bearer {ticket}"})
        put_answer, get_answer = await gatherResults([self.answer(put, 10), self.answer(get, 10)])
        if put_answer.status == 200:
            self.assertEqual((get_answer.body, get_answer.complete), (payload, True))
        if get_answer.status == 408:
            self.assertEqual(get_answer.headers.get("content-type"), "application/json")
        return put_answer.status, get_answer.status
