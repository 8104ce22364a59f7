"""
C{POST /api/turns} (C{app-gateway.md} §8.1–§8.3): a trusted caller runs one codex turn in a
workspace and gets the final Turn, or the transport error that prevented it, as JSON.

L{TurnAPI.handle} does everything for one request: the C{X-Internal-Secret} check, the 16 MiB body
limit, validation (L{parse_turn_request}), the flow of §8.2 (pin, pooled Conn, C{thread/start} when no
thread is given, the turn) and the response. The coordinator mounts it in the Klein app; it returns a
Deferred, and Klein's cancellation of that Deferred (the client went away) stops the wait.

Decisions where the spec is silent:
 - The checks run in the order §8.1 lists them: secret (500, 401), then body size (413), then
   validation (400). The site must keep bodies of up to 16 MiB (L{MAX_BODY_BYTES}) for this route.
 - Validation texts for the C{invalid json: …} family: C{invalid json: <JSON error>} for a body that
   is not UTF-8 JSON (C{NaN} and C{Infinity} are not JSON), C{invalid json: body must be a JSON
   object}, C{invalid json: workspaceId must be a string}, C{… threadId must be a string},
   C{… timeoutMs must be an integer} (booleans and fractions are not integers). C{null} means
   absent for all three fields.
 - C{timeoutMs} above L{MAX_TIMEOUT_MS} (about 31 years) is treated as that value, so no value can
   overflow the clock.
 - A client that disconnects is not counted in C{codexgw_turns_total} or C{codexgw_turn_seconds}
   (there is no result to count); it is logged as C{turn abandoned by client}.
 - After L{TurnAPI.shutdown} began, new valid requests are answered at once with C{wsDisconnect}
   C{gateway shutting down}, as pending ones are.
 - C{turn finished} is logged at info with C{workspace_id}, C{code} (C{completed} or the transport
   code) and C{duration} (seconds from the start of the flow).
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass, field
from typing import Any, Final, cast

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest

from codexgw.appgw.broker import (
    SHUTTING_DOWN,
    TransportError,
    WSDisconnect,
    transport_error,
)
from codexgw.appgw.brokerpool import BrokerPool
from codexgw.appgw.codexhome import is_valid_workspace_id
from codexgw.appgw.metrics import AppMetrics
from codexgw.appgw.supervision import ISupervisor
from codexgw.config import Secret
from codexgw.httpio import body_exceeds, json_body, read_body, text_response

#: Largest accepted body (§8.1).
MAX_BODY_BYTES: Final = 16 << 20
#: The turn timeout when C{timeoutMs} is absent or not positive, in milliseconds.
DEFAULT_TIMEOUT_MS: Final = 300_000
#: The largest C{timeoutMs} honoured.
MAX_TIMEOUT_MS: Final = 10**12

log = Logger()


class InvalidTurnRequest(ValueError):
    """
    The body is not a valid Turn API request; C{str()} is the exact 400 text.
    """


@dataclass(frozen=True)
class TurnRequest:
    """
    A validated C{POST /api/turns} body.

    @ivar workspace_id: the workspace.
    @ivar thread_id: the thread to continue; C{""} to start a new one.
    @ivar params: the caller's C{TurnStartParams} (without C{threadId}), key order kept.
    @ivar timeout: seconds the turn may take.
    """

    workspace_id: str
    thread_id: str
    params: dict[str, Any]
    timeout: float


def _no_constants(name: str) -> object:
    raise ValueError(f"{name} is not valid JSON")


def parse_turn_request(body: bytes) -> TurnRequest:
    """
    Validate a request body in the order of §8.1.

    @raise InvalidTurnRequest: with the exact 400 text.
    """
    try:
        value = json.loads(body.decode("utf-8"), parse_constant=_no_constants)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise InvalidTurnRequest(f"invalid json: {e}") from None
    if not isinstance(value, dict):
        raise InvalidTurnRequest("invalid json: body must be a JSON object")
    workspace_id = value.get("workspaceId")
    thread_id = value.get("threadId")
    timeout_ms = value.get("timeoutMs")
    if workspace_id is not None and not isinstance(workspace_id, str):
        raise InvalidTurnRequest("invalid json: workspaceId must be a string")
    if thread_id is not None and not isinstance(thread_id, str):
        raise InvalidTurnRequest("invalid json: threadId must be a string")
    if timeout_ms is not None and (not isinstance(timeout_ms, int) or isinstance(timeout_ms, bool)):
        raise InvalidTurnRequest("invalid json: timeoutMs must be an integer")
    if not workspace_id:
        raise InvalidTurnRequest("workspaceId required")
    if not is_valid_workspace_id(workspace_id):
        raise InvalidTurnRequest("invalid workspaceId")
    params = value.get("params")
    if params is None:
        raise InvalidTurnRequest("params required")
    if not isinstance(params, dict):
        raise InvalidTurnRequest("params must be a JSON object")
    if "threadId" in params:
        raise InvalidTurnRequest("params must not include threadId")
    if timeout_ms is None or timeout_ms <= 0:
        timeout_ms = DEFAULT_TIMEOUT_MS
    return TurnRequest(workspace_id, thread_id or "", params, min(timeout_ms, MAX_TIMEOUT_MS) / 1000)


@dataclass(eq=False)
class _InFlight:
    """
    One request in the flow of §8.2.

    @ivar answer: what L{TurnAPI.handle} returned; fires with the response body.
    @ivar thread_id: the thread as far as known (C{""} before one was started).
    @ivar work: the flow, cancelled when the answer was given by someone else or the client left.
    """

    request: IRequest
    turn: TurnRequest
    started: float
    answer: Deferred[bytes]
    thread_id: str
    work: Deferred[None] | None = field(default=None)


class TurnAPI:
    """
    The C{POST /api/turns} route.
    """

    def __init__(
        self,
        pool: BrokerPool,
        supervisor: ISupervisor,
        metrics: AppMetrics,
        clock: IReactorTime,
        secret: Secret | None,
    ) -> None:
        """
        @param pool: the broker's Conns.
        @param supervisor: for the per-request pin.
        @param metrics: C{turns_total} and C{turn_seconds}.
        @param clock: measures durations.
        @param secret: C{CXG_AGENTSERVER_INTERNAL_SECRET}; C{None} answers every request with 500.
        """
        self._secret = secret
        self._pool = pool
        self._supervisor = supervisor
        self._metrics = metrics
        self._clock = clock
        self._in_flight: set[_InFlight] = set()
        self._shutting_down = False

    def handle(self, request: IRequest) -> Deferred[bytes]:
        """
        Answer one C{POST /api/turns}.

        @return: the response body (status and headers are set on C{request}). Cancelling it (Klein
            does when the client disconnects) stops the wait without interrupting the turn.
        """
        refusal = self._refusal(request)
        if refusal is not None:
            return succeed(refusal)
        try:
            turn = parse_turn_request(read_body(request))
        except InvalidTurnRequest as e:
            return succeed(text_response(request, 400, str(e)))
        flight = _InFlight(
            request=request,
            turn=turn,
            started=self._clock.seconds(),
            answer=Deferred(lambda _: self._client_gone(flight)),
            thread_id=turn.thread_id,
        )
        if self._shutting_down:
            self._respond(flight, WSDisconnect(SHUTTING_DOWN))
            return flight.answer
        self._in_flight.add(flight)
        finished: Deferred[None] = cast(Any, request).notifyFinish()
        finished.addErrback(lambda _: flight.answer.cancel() if not flight.answer.called else None)
        flight.work = ensureDeferred(self._run(flight))
        return flight.answer

    def _refusal(self, request: IRequest) -> bytes | None:
        if self._secret is None:
            return text_response(request, 500, "internal secret not configured")
        presented = request.getHeader(b"X-Internal-Secret")
        if presented is None or not hmac.compare_digest(presented, self._secret.value):
            return text_response(request, 401, "unauthorized")
        if body_exceeds(request, MAX_BODY_BYTES):
            return text_response(request, 413, "request body too large")
        return None

    async def _run(self, flight: _InFlight) -> None:
        turn = flight.turn
        unpin = self._supervisor.pin(turn.workspace_id)
        try:
            conn = await self._pool.get(turn.workspace_id)
            if not flight.thread_id:
                flight.thread_id = await conn.start_thread()
            completed = await conn.turn(flight.thread_id, turn.params, turn.timeout)
            self._respond(flight, completed)
        except CancelledError:
            pass  # the answer was given already (shutdown), or the client left
        except TransportError as e:
            self._respond(flight, e)
        except Exception as e:
            log.failure("turn failed unexpectedly", Failure(), workspace_id=turn.workspace_id)
            self._respond(flight, transport_error(e))
        finally:
            unpin()
            self._in_flight.discard(flight)

    def _respond(self, flight: _InFlight, outcome: dict[str, Any] | TransportError) -> None:
        if flight.answer.called:
            return
        if isinstance(outcome, TransportError):
            code = outcome.code
            value: dict[str, object] = {
                "threadId": flight.thread_id,
                "transport": {"code": outcome.code, "message": outcome.message},
            }
        else:
            code = "completed"
            value = {"threadId": flight.thread_id, "turn": outcome}
        duration = self._clock.seconds() - flight.started
        self._metrics.turns.labels(result=code).inc()
        self._metrics.turn_seconds.observe(duration)
        log.info(
            "turn finished",
            workspace_id=flight.turn.workspace_id,
            code=code,
            duration=round(duration, 3),
        )
        request = flight.request
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", b"application/json")
        try:
            body = json_body(value)
        except UnicodeEncodeError:
            # A lone surrogate codex escaped cannot be UTF-8; JSON escapes can carry it.
            body = json.dumps(value, separators=(",", ":")).encode("ascii") + b"\n"
        request.setHeader(b"Content-Length", b"%d" % len(body))
        flight.answer.callback(body)

    def _client_gone(self, flight: _InFlight) -> None:
        # §8.2 step 5: stop waiting, interrupt nothing, write nothing.
        log.info("turn abandoned by client", workspace_id=flight.turn.workspace_id)
        self._in_flight.discard(flight)
        if flight.work is not None and not flight.work.called:
            flight.work.cancel()

    def shutdown(self) -> Deferred[None]:
        """
        Answer every pending request with C{wsDisconnect} C{gateway shutting down}, refuse new ones
        the same way, and close the pool.

        @return: fires once the pool is closed.
        """
        self._shutting_down = True
        for flight in list(self._in_flight):
            self._respond(flight, WSDisconnect(SHUTTING_DOWN))
            if flight.work is not None and not flight.work.called:
                flight.work.cancel()
        self._in_flight.clear()
        return self._pool.close()
