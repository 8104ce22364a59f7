"""
The exec gateway's HTTPS byte relay (C{exec-gateway.md} §4.6 create, §4.7 transfer, §6.5 tickets,
§7.6 registry, §9.5 streaming): single-use, in-memory pairing of one uploader (C{PUT /relay/<ticket>})
and one downloader (C{GET /relay/<ticket>}), streaming the upload's body into the download's response.

Three layers:
 - L{RelayRegistry} mints tickets (C{rly_} + 43 base64url characters), enforces the per-workspace cap
   of active relays and finds live relays by ticket; L{create_relay} adds the ownership checks of
   §4.6, so the HTTP route and the SDK's in-process relay creator (§11) create tickets identically.
 - L{Relay} is the pairing protocol of one ticket, free of twisted.web: it drives its two sides
   through L{IRelayUpload} and L{IRelayDownload} and learns from them what happened (body pieces, end
   of body, congestion, lost connections), on an injected clock. It writes the exact pairing responses
   of §4.7 and counts bytes.
 - L{RequestUpload} and L{RequestDownload} bind those interfaces to twisted.web requests: the upload
   reads the request body as a stream (L{codexgw.httpio.BoundedRequest.read_body_stream}; the site
   processes C{PUT /relay/} as soon as its headers arrive), the download registers itself as the
   response's push producer, so a congested download transport pauses the upload's socket (§9.5).
   Memory per relay is therefore one socket read plus the download transport's buffer: the upload's
   socket is read L{UPLOAD_READ_BYTES} at a time and the download's transport buffers up to
   L{DOWNLOAD_BUFFER_BYTES} before it pauses the upload, about 1.5 MiB at most (≤ 2 MiB, §9.1). Larger
   pieces than Twisted's 64 KiB default mean fewer pause/resume rounds and system calls per byte
   (about a quarter less gateway CPU per GiB in C{bench/relay.py}).

Decisions where the spec is silent:
 - Expiry runs on the clock as a timer at exactly create time + ttl (fractional TTLs such as a 2 ms
   C{CXG_RELAY_DEFAULT_TTL} included); a lookup at or after that moment finds nothing even if the timer
   has not run yet. C{expires_at} is reported with its fraction.
 - Tickets are looked up by their SHA-256 and then compared in constant time, so neither the lookup
   nor the comparison depends on how much of a guessed ticket is right.
 - Outcomes of C{relay.finished} / C{cxg_exec_relays_total}: C{ok} (upload body ended, download
   finished); C{timeout} (the ticket expired, with one side waiting or none); C{error} (max_bytes
   exceeded, or a side lost mid-transfer); C{abandoned} (the waiting side's connection was lost
   before the other side came). C{bytes} is what was written to the download.
 - Overflow of C{max_bytes}: the part of the overflowing piece that still fits is written to the
   download before it is aborted, so the download gets exactly C{max_bytes} bytes; the error message
   reports the bytes received so far (including that whole piece).
 - An aborted download's connection is closed without the final chunk after what was written is
   flushed (so the client gets every relayed byte, then an incomplete body); a client that does not
   read that far within L{ABORT_GRACE} seconds is cut with a TCP abort.
 - The upload's 200 is sent right after the download response was finished (handed to its transport),
   without waiting for the downloader to read it.
 - Once paired, neither side has a deadline: a downloader that stops reading holds the upload paused
   (memory stays bounded); TCP keepalive ends transfers whose peer vanished.
 - A waiting upload's body is not read, so its connection loss is only seen at pairing or expiry
   (the socket is not read meanwhile); a waiting download's loss is seen at once.
"""

# twisted.web's request and Twisted's transports are untyped.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from zope.interface import Interface, implementer

from codexgw.execgw.metrics import ExecMetrics
from codexgw.execgw.store import IStore
from codexgw.execgw.timestamps import format_timestamp
from codexgw.httpio import BoundedRequest, read_body
from codexgw.tokens import b64url_encode

log = Logger()

#: The ticket prefix (§6.5).
TICKET_PREFIX: Final = "rly_"
#: Random bytes in a ticket.
TICKET_BYTES: Final = 32
#: The longest lifetime a create request may ask for, in seconds (§4.6 step 4).
MAX_TTL_SECONDS: Final = 86400
#: Deadline of the two ownership checks of a create, together (§4.6 step 3).
OWNERSHIP_DEADLINE: Final = 5.0
#: Seconds an aborted download's connection gets to flush what was written before it is cut.
ABORT_GRACE: Final = 5.0
#: Bytes an upload's socket is read at a time.
UPLOAD_READ_BYTES: Final = 256 * 1024
#: Bytes a download's transport buffers before it asks for the upload to pause.
DOWNLOAD_BUFFER_BYTES: Final = 1024 * 1024

RELAY_DISABLED: Final = "relay not enabled (PublicHTTPSBaseURL unset)"
IDS_REQUIRED: Final = "workspace_id, source_exe_id, dest_exe_id required"
OWNERSHIP_FAILED: Final = "ownership check failed"
CAP_REACHED: Final = "relay: workspace concurrent relay cap reached"
PUT_CLAIMED: Final = "PUT side already claimed"
GET_CLAIMED: Final = "GET side already claimed"
PUT_TIMED_OUT: Final = "timed out waiting for GET side"
GET_TIMED_OUT: Final = "timed out waiting for PUT side"
DOWNLOAD_LOST: Final = "relay: download side disconnected"
UPLOAD_LOST: Final = "relay: upload side disconnected"


def pairing_body(value: dict[str, object]) -> bytes:
    """
    A pairing response body (§4.7): compact JSON, keys in the order given, no trailing newline.
    """
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def new_ticket(random_bytes: Callable[[int], bytes] = os.urandom) -> str:
    """
    A fresh relay ticket: C{rly_} + base64url (no padding) of 32 random bytes, 47 characters.
    """
    return TICKET_PREFIX + b64url_encode(random_bytes(TICKET_BYTES))


def _ticket_key(ticket: str) -> bytes:
    return hashlib.sha256(ticket.encode("utf-8", "surrogateescape")).digest()


class RelayRefused(Exception):
    """
    A relay could not be created; C{status} and C{message} are the route's answer (§4.6).
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class IRelayUpload(Interface):
    """
    The uploading side (C{PUT}) of a relay, as the relay drives it.

    It starts paused: nothing of its body reaches the relay before L{resume}. It reports to its
    L{Relay} with C{upload_received}, C{upload_ended} and C{upload_lost}.
    """

    def pause() -> None:
        """
        Stop delivering the body (and reading it from the network).
        """

    def resume() -> None:
        """
        Deliver the body, from where it stopped.
        """

    def respond(status: int, body: bytes) -> None:
        """
        Answer with C{status} and a JSON C{body} and end the request; the side then reports nothing more.
        """


class IRelayDownload(Interface):
    """
    The downloading side (C{GET}) of a relay, as the relay drives it.

    It reports to its L{Relay} with C{download_congested} and C{download_lost}.
    """

    def write(data: bytes) -> None:
        """
        Send the next bytes of the 200 octet-stream response (the first call sends its headers).
        """

    def finish() -> None:
        """
        End the 200 response completely (headers first if nothing was written).
        """

    def abort() -> None:
        """
        Cut the connection so the client sees an incomplete response.
        """

    def respond(status: int, body: bytes) -> None:
        """
        Answer with C{status} and a JSON C{body} instead of the octet stream.
        """


class RelayState(enum.Enum):
    """
    Where a relay is in its life.
    """

    WAITING = "waiting"
    TRANSFERRING = "transferring"
    FINISHED = "finished"


@dataclass(frozen=True)
class RelayGrant:
    """
    A created relay as §4.6 answers it.
    """

    ticket: str
    upload_url: str
    download_url: str
    expires_at: datetime

    def json(self) -> dict[str, object]:
        """
        The 201 body, keys in the spec's order.
        """
        return {
            "ticket": self.ticket,
            "upload_url": self.upload_url,
            "download_url": self.download_url,
            "expires_at": format_timestamp(self.expires_at),
        }


class Relay:
    """
    The pairing of one ticket's upload and download.

    Events from a side that is not this relay's current claimant, or that arrive after the relay
    finished, are ignored, so a side can report freely (and more than once).

    @ivar received: body bytes received from the upload.
    @ivar written: bytes written to the download.
    """

    def __init__(
        self,
        registry: RelayRegistry,
        ticket: str,
        workspace_id: str,
        source_exe_id: str,
        dest_exe_id: str,
        created_at: float,
        ttl: float,
        max_bytes: int,
    ) -> None:
        self._registry = registry
        self.ticket = ticket
        self.workspace_id = workspace_id
        self.source_exe_id = source_exe_id
        self.dest_exe_id = dest_exe_id
        self.created_at = created_at
        self.ttl = ttl
        self.expires_at = created_at + ttl
        self.max_bytes = max_bytes
        self.state = RelayState.WAITING
        self.received = 0
        self.written = 0
        self.upload: IRelayUpload | None = None
        self.download: IRelayDownload | None = None
        self.outcome: str | None = None
        self.clock = registry.clock
        self._congested = False
        self._expiry: IDelayedCall | None = None

    # -- claims

    def attach_upload(self, side: IRelayUpload) -> bool:
        """
        Claim the upload side; a second claim is answered 423. Pairs when the download waits.

        @return: whether C{side} is now this relay's upload.
        """
        if self.state is RelayState.FINISHED or self.upload is not None:
            side.respond(423, pairing_body({"error": PUT_CLAIMED}))
            return False
        self.upload = side
        self._pair()
        return True

    def attach_download(self, side: IRelayDownload) -> bool:
        """
        Claim the download side; a second claim is answered 423. Pairs when the upload waits.

        @return: whether C{side} is now this relay's download.
        """
        if self.state is RelayState.FINISHED or self.download is not None:
            side.respond(423, pairing_body({"error": GET_CLAIMED}))
            return False
        self.download = side
        self._pair()
        return True

    def _pair(self) -> None:
        if self.upload is None or self.download is None:
            return
        # Both sides are here: the expiry no longer applies.
        self.state = RelayState.TRANSFERRING
        self._cancel_expiry()
        if not self._congested:
            self.upload.resume()

    # -- upload events

    def upload_received(self, side: IRelayUpload, data: bytes) -> None:
        """
        A piece of the upload's body: written to the download, within C{max_bytes}.
        """
        if side is not self.upload or self.state is not RelayState.TRANSFERRING or not data:
            return
        self.received += len(data)
        if self.max_bytes > 0 and self.received > self.max_bytes:
            room = self.max_bytes - self.written
            if room > 0:
                self._write(data[:room])
            error = f"relay: payload exceeded MaxBytes ({self.received} > {self.max_bytes})"
            download = self.download
            self._finish("error", error)
            if download is not None:
                download.abort()
            side.respond(500, pairing_body({"bytes": self.written, "error": error}))
            return
        self._write(data)

    def _write(self, data: bytes) -> None:
        assert self.download is not None
        self.written += len(data)
        self._registry.count_bytes(len(data))
        self.download.write(data)

    def upload_ended(self, side: IRelayUpload) -> None:
        """
        The upload's body ended: finish the download, then answer the upload 200.
        """
        if side is not self.upload or self.state is not RelayState.TRANSFERRING:
            return
        download = self.download
        self._finish("ok")
        if download is not None:
            download.finish()
        side.respond(200, pairing_body({"bytes": self.written, "status": "ok"}))

    def upload_lost(self, side: IRelayUpload) -> None:
        """
        The upload's connection is gone: abandoned while waiting, the download aborted mid-transfer.
        """
        if side is not self.upload or self.state is RelayState.FINISHED:
            return
        if self.state is RelayState.WAITING:
            self._finish("abandoned")
            return
        download = self.download
        self._finish("error", UPLOAD_LOST)
        if download is not None:
            download.abort()

    # -- download events

    def download_congested(self, side: IRelayDownload, congested: bool) -> None:
        """
        The download's transport filled up (or drained): pause (or resume) the upload.
        """
        if side is not self.download or self.state is RelayState.FINISHED:
            return
        self._congested = congested
        if self.state is not RelayState.TRANSFERRING:
            return
        assert self.upload is not None
        if congested:
            self.upload.pause()
        else:
            self.upload.resume()

    def download_lost(self, side: IRelayDownload) -> None:
        """
        The download's connection is gone: abandoned while waiting, the upload answered 500
        mid-transfer.
        """
        if side is not self.download or self.state is RelayState.FINISHED:
            return
        if self.state is RelayState.WAITING:
            self._finish("abandoned")
            return
        upload = self.upload
        self._finish("error", DOWNLOAD_LOST)
        if upload is not None:
            upload.respond(500, pairing_body({"bytes": self.written, "error": DOWNLOAD_LOST}))

    # -- expiry and the end

    def start_expiry(self) -> None:
        """
        Arm the expiry timer (the registry does, at creation).
        """
        self._expiry = self.clock.callLater(max(0.0, self.ttl), self.expire)

    def _cancel_expiry(self) -> None:
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self._expiry = None

    @property
    def waiting(self) -> bool:
        """
        Whether the relay is still waiting for its sides (so its expiry applies).
        """
        return self.state is RelayState.WAITING

    def expire(self) -> None:
        """
        The ticket's time is up: a waiting side is answered 408 and the ticket removed. A paired
        relay is not affected.
        """
        self._expiry = None
        if self.state is not RelayState.WAITING:
            return
        upload, download = self.upload, self.download
        self._finish("timeout")
        if upload is not None:
            upload.respond(408, pairing_body({"error": PUT_TIMED_OUT}))
        if download is not None:
            download.respond(408, pairing_body({"error": GET_TIMED_OUT}))

    def _finish(self, outcome: str, error: str = "") -> None:
        # The state changes before any side is told, so whatever the sides report back is ignored.
        self.state = RelayState.FINISHED
        self.outcome = outcome
        self._cancel_expiry()
        self._registry.finished(self, outcome, error)


class RelayRegistry:
    """
    The live relays (§7.6): ticket → L{Relay}, and the active count per workspace.

    A relay is active from its creation until it finishes or expires; then it is removed at once.
    """

    def __init__(
        self,
        clock: IReactorTime,
        base_url: str,
        default_ttl: float,
        max_per_workspace: int,
        metrics: ExecMetrics | None = None,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        """
        @param base_url: C{CXG_PUBLIC_HTTPS_BASE_URL} (without a trailing C{/}).
        @param default_ttl: seconds a ticket lives when the create asks for no TTL.
        @param max_per_workspace: active relays allowed per workspace.
        """
        self.clock = clock
        self.base_url = base_url
        self.default_ttl = default_ttl
        self.max_per_workspace = max_per_workspace
        self.metrics = metrics
        self._random_bytes = random_bytes
        self._relays: dict[bytes, Relay] = {}
        self._active: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._relays)

    def active(self, workspace_id: str) -> int:
        """
        The active relays of C{workspace_id}.
        """
        return self._active.get(workspace_id, 0)

    def create(
        self,
        workspace_id: str,
        source_exe_id: str,
        dest_exe_id: str,
        ttl_seconds: int = 0,
        max_bytes: int = 0,
    ) -> RelayGrant:
        """
        Mint a ticket (no ownership checks: see L{create_relay}).

        @param ttl_seconds: lifetime; > 0 is capped at 86400, otherwise the default TTL applies.
        @param max_bytes: the most bytes the download may get; ≤ 0 is unlimited.
        @raise RelayRefused: 429 when the workspace has its maximum of active relays.
        """
        if self.active(workspace_id) >= self.max_per_workspace:
            raise RelayRefused(429, CAP_REACHED)
        ttl = float(min(ttl_seconds, MAX_TTL_SECONDS)) if ttl_seconds > 0 else self.default_ttl
        ticket = new_ticket(self._random_bytes)
        while _ticket_key(ticket) in self._relays:
            ticket = new_ticket(self._random_bytes)
        relay = Relay(
            self,
            ticket,
            workspace_id,
            source_exe_id,
            dest_exe_id,
            self.clock.seconds(),
            ttl,
            max(0, max_bytes),
        )
        self._relays[_ticket_key(ticket)] = relay
        self._active[workspace_id] = self.active(workspace_id) + 1
        if self.metrics is not None:
            self.metrics.relays_active.inc()
        relay.start_expiry()
        log.info(
            "relay created in {workspace_id} from {source_exe_id} to {dest_exe_id}",
            event="relay.created",
            workspace_id=workspace_id,
            source_exe_id=source_exe_id,
            dest_exe_id=dest_exe_id,
            ttl_s=ttl,
        )
        url = f"{self.base_url}/relay/{ticket}"
        return RelayGrant(ticket, url, url, datetime.fromtimestamp(relay.expires_at, UTC))

    def find(self, ticket: str) -> Relay | None:
        """
        The live relay of C{ticket}, or C{None} (never minted, finished or expired).
        """
        relay = self._relays.get(_ticket_key(ticket))
        if relay is None or not hmac.compare_digest(
            relay.ticket.encode("ascii"), ticket.encode("utf-8", "surrogateescape")
        ):
            return None
        if relay.waiting and self.clock.seconds() >= relay.expires_at:
            relay.expire()
            return None
        return relay

    def count_bytes(self, size: int) -> None:
        """
        Bytes written to a download (C{cxg_exec_relay_bytes_total}).
        """
        if self.metrics is not None:
            self.metrics.relay_bytes.inc(size)

    def finished(self, relay: Relay, outcome: str, error: str) -> None:
        """
        Remove a finished relay (its L{Relay} calls this once).
        """
        if self._relays.pop(_ticket_key(relay.ticket), None) is None:
            return
        left = self.active(relay.workspace_id) - 1
        if left > 0:
            self._active[relay.workspace_id] = left
        else:
            self._active.pop(relay.workspace_id, None)
        if self.metrics is not None:
            self.metrics.relays_active.dec()
            self.metrics.relays.labels(outcome=outcome).inc()
        log.info(
            "relay in {workspace_id} finished: {outcome}",
            event="relay.finished",
            workspace_id=relay.workspace_id,
            source_exe_id=relay.source_exe_id,
            dest_exe_id=relay.dest_exe_id,
            outcome=outcome,
            bytes=relay.written,
            error=error,
        )


async def create_relay(
    relays: RelayRegistry,
    store: IStore,
    workspace_id: str,
    source_exe_id: str,
    dest_exe_id: str,
    ttl_seconds: int = 0,
    max_bytes: int = 0,
) -> RelayGrant:
    """
    Create a relay as C{POST /api/exec-gateway/relay/create} does after parsing (§4.6 steps 2–5):
    the three ids, both executors bound to the workspace (5 s for both checks), the cap.

    @raise RelayRefused: 400, 403 (naming the executor), 500 (store failure or deadline; the store's
        error is the C{__cause__}) or 429, with the spec's messages.
    """
    if not workspace_id or not source_exe_id or not dest_exe_id:
        raise RelayRefused(400, IDS_REQUIRED)

    async def owned_both() -> str | None:
        for exe_id in (source_exe_id, dest_exe_id):
            if not await store.owns_executor(workspace_id, exe_id):
                return exe_id
        return None

    checks = Deferred.fromCoroutine(owned_both())
    try:
        stranger = await checks.addTimeout(OWNERSHIP_DEADLINE, relays.clock)
    except Exception as e:
        raise RelayRefused(500, OWNERSHIP_FAILED) from e
    if stranger is not None:
        raise RelayRefused(403, f"executor not in workspace: {stranger}")
    return relays.create(workspace_id, source_exe_id, dest_exe_id, ttl_seconds, max_bytes)


# -------------------------------------------------------------------------------------------------
# The sides as twisted.web requests


#: Reason phrases Twisted does not know.
_REASONS: Final = {423: b"Locked"}


def _json_answer(request: IRequest, status: int, body: bytes) -> None:
    request.setResponseCode(status, _REASONS.get(status))
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Content-Length", b"%d" % len(body))
    request.write(body)
    request.finish()


def _set_buffer_size(request: Any, size: int) -> None:
    # TCP transports read, and buffer writes, up to their bufferSize (64 KiB by default).
    transport = getattr(getattr(request, "channel", None), "transport", None)
    if transport is not None and hasattr(transport, "bufferSize"):
        transport.bufferSize = size


def _answerable(request: Any) -> bool:
    return not (request.finished or request._disconnected)


@implementer(IRelayUpload)
class RequestUpload:
    """
    A C{PUT /relay/<ticket>} request as a relay's upload.

    @ivar done: fires (with C{None}) once this side answered its request; its cancellation (the web
        framework cancels it when the client goes away) reports the upload lost.
    """

    def __init__(self, request: IRequest, relay: Relay) -> None:
        self.request: Any = request
        self.relay = relay
        self.done: Deferred[None] = Deferred(lambda _: self._lost())
        self._buffered: bytes | None = None
        cast(Any, request).notifyFinish().addErrback(lambda _: self._lost())
        if isinstance(request, BoundedRequest):
            request.read_body_stream(self)
            _set_buffer_size(request, UPLOAD_READ_BYTES)
        else:
            # Not a request of our sites (tests with other request classes): its body is all there.
            self._buffered = read_body(request)

    # IBodyReceiver

    def body_received(self, data: bytes) -> None:
        """
        Hand a piece of the body to the relay.
        """
        self.relay.upload_received(self, data)

    def body_ended(self) -> None:
        """
        Tell the relay the body ended.
        """
        self.relay.upload_ended(self)

    # IRelayUpload

    def pause(self) -> None:
        """
        Stop reading the body.
        """
        if isinstance(self.request, BoundedRequest):
            self.request.pause_body()

    def resume(self) -> None:
        """
        Read the body again.
        """
        if isinstance(self.request, BoundedRequest):
            self.request.resume_body()
        elif self._buffered is not None:
            body, self._buffered = self._buffered, None
            if body:
                self.body_received(body)
            self.body_ended()

    def respond(self, status: int, body: bytes) -> None:
        """
        Answer the PUT (a response before the end of the body also closes the connection).
        """
        if _answerable(self.request):
            _json_answer(self.request, status, body)
        if not self.done.called:
            self.done.callback(None)

    def _lost(self) -> None:
        self.relay.upload_lost(self)


@implementer(IRelayDownload, IPushProducer)
class RequestDownload:
    """
    A C{GET /relay/<ticket>} request as a relay's download, and the push producer of its response:
    its transport's congestion reaches the relay as L{Relay.download_congested}.

    @ivar done: as L{RequestUpload.done}.
    """

    def __init__(self, request: IRequest, relay: Relay, clock: IReactorTime | None = None) -> None:
        """
        @param clock: for the L{ABORT_GRACE} of an abort (the relay's clock by default).
        """
        self.request: Any = request
        self.relay = relay
        self.clock = clock if clock is not None else relay.clock
        self.done: Deferred[None] = Deferred(lambda _: self._lost())
        self._started = False
        self._producing = False
        self._cut: IDelayedCall | None = None
        cast(Any, request).notifyFinish().addErrback(lambda _: self._lost())

    def _start(self) -> None:
        if self._started:
            return
        self._started = True
        request = self.request
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", b"application/octet-stream")
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        request.registerProducer(self, True)
        self._producing = True
        _set_buffer_size(request, DOWNLOAD_BUFFER_BYTES)

    def _unregister(self) -> None:
        if self._producing:
            self._producing = False
            if _answerable(self.request):
                self.request.unregisterProducer()

    # IRelayDownload

    def write(self, data: bytes) -> None:
        """
        Send bytes (the headers go out with the first ones).
        """
        self._start()
        if _answerable(self.request):
            self.request.write(data)

    def finish(self) -> None:
        """
        End the octet stream (the final chunk).
        """
        self._start()
        self._unregister()
        if _answerable(self.request):
            self.request.finish()
        if not self.done.called:
            self.done.callback(None)

    def abort(self) -> None:
        """
        Close the connection without the final chunk, so the client sees an incomplete transfer.
        """
        self._unregister()
        channel = getattr(self.request, "channel", None)
        transport = getattr(channel, "transport", None)
        if transport is not None and self._cut is None:
            transport.loseConnection()
            self._cut = self.clock.callLater(ABORT_GRACE, transport.abortConnection)

    def respond(self, status: int, body: bytes) -> None:
        """
        Answer with a JSON body instead of the octet stream (no octet-stream bytes were written).
        """
        self._unregister()
        if _answerable(self.request):
            _json_answer(self.request, status, body)
        if not self.done.called:
            self.done.callback(None)

    # IPushProducer: the response's transport

    def pauseProducing(self) -> None:
        """
        The transport's buffer is full.
        """
        self.relay.download_congested(self, True)

    def resumeProducing(self) -> None:
        """
        The transport's buffer drained.
        """
        self.relay.download_congested(self, False)

    def stopProducing(self) -> None:
        """
        The transport is going away.
        """
        self._lost()

    def _lost(self, _: Failure | None = None) -> None:
        if self._cut is not None and self._cut.active():
            self._cut.cancel()
        self.relay.download_lost(self)
