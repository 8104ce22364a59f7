"""
The registration client (C{executor.md} §2 step 1, C{exec-gateway.md} §4.4): trade the registration
token for a websocket URL carrying a short-lived single-use ticket.

C{POST {gateway}/cloud/executor/{exe_id}/register} with C{Authorization: Bearer <token>}, the agent's
C{User-Agent} and the body C{{}}. A 200 answer's C{url} is returned; any 4xx is a
L{RegistrationRejected} (fatal: a rejected token is never retried); everything else — network errors,
timeouts, 5xx, other statuses, a 200 without a usable C{url} — is a L{RegistrationFailed}, retried by
the service with backoff.

Decisions where the spec is silent:
 - The request (connect, answer and body) must finish within 10 s, else it fails and is retried.
 - An answer body is read up to 64 KiB (a registration answer is tiny; a larger one is a failure).
 - The rejection text is the body decoded as UTF-8 (invalid bytes replaced), stripped and cut to 500
   characters, so a misbehaving server cannot flood the log.
 - The C{exe_id} is percent-encoded as one path segment.
"""

from __future__ import annotations

import json
import platform
from importlib import metadata
from typing import Final
from urllib.parse import quote

import treq
from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.iweb import IResponse

#: Seconds a registration request may take in all.
REQUEST_TIMEOUT: Final = 10.0
#: Largest answer body read.
MAX_BODY_BYTES: Final = 64 * 1024
#: Longest rejection text kept for the log.
MAX_REJECTION_TEXT: Final = 500


class RegistrationRejected(Exception):
    """
    The gateway refused the registration token with a 4xx: never retry.

    @ivar status: the HTTP status.
    @ivar body: the answer body as text (see the module docstring).
    """

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"registration rejected ({status}): {body}")
        self.status = status
        self.body = body


class RegistrationFailed(Exception):
    """
    The registration did not succeed for a reason worth retrying.
    """


def user_agent() -> str:
    """
    C{codexgw-executor/<version> (<OS> <release>; <arch>)}.
    """
    try:
        version = metadata.version("codexgw")
    except metadata.PackageNotFoundError:  # running from a source tree that was never installed
        version = "0"
    return f"codexgw-executor/{version} ({platform.system()} {platform.release()}; {platform.machine()})"


def registration_url(gateway: str, executor_id: str) -> str:
    """
    The registration endpoint of C{executor_id} on C{gateway} (a base URL without trailing C{/}).
    """
    return f"{gateway}/cloud/executor/{quote(executor_id, safe='')}/register"


class RegistrationClient:
    """
    Registers one executor with one gateway.
    """

    def __init__(
        self,
        http: HTTPClient,
        clock: IReactorTime,
        gateway: str,
        executor_id: str,
        token: str,
        agent_name: str,
        timeout: float = REQUEST_TIMEOUT,
    ) -> None:
        """
        @param http: the treq client requests go through.
        @param clock: schedules the request timeout.
        @param agent_name: the C{User-Agent} value.
        """
        self._http = http
        self._clock = clock
        self._url = registration_url(gateway, executor_id)
        self._token = token
        self._agent_name = agent_name
        self._timeout = timeout

    def register(self) -> Deferred[str]:
        """
        Register once.

        @return: fires with the websocket URL, or fails with L{RegistrationRejected} or
            L{RegistrationFailed}; cancelling it abandons the request (C{CancelledError}).
        """
        # Why the request was abandoned, if it was: treq reports an abandoned request with an error
        # of its own, so the reason is remembered here rather than read from that error.
        stopped = ""
        attempt = Deferred.fromCoroutine(self._register())

        def stop(why: str) -> None:
            nonlocal stopped
            if not attempt.called:
                stopped = why
                attempt.cancel()

        timer = self._clock.callLater(self._timeout, stop, "timeout")

        def succeeded(url: str) -> str:
            if timer.active():
                timer.cancel()
            return url

        def failed(failure: Failure) -> str:
            if timer.active():
                timer.cancel()
            if stopped == "cancel":
                raise CancelledError()
            if stopped == "timeout":
                raise RegistrationFailed(f"no answer within {self._timeout:g}s")
            if failure.check(RegistrationRejected, RegistrationFailed):
                failure.raiseException()
            raise RegistrationFailed(failure.getErrorMessage() or repr(failure.value))

        outcome: Deferred[str] = Deferred(lambda _: stop("cancel"))
        attempt.addCallbacks(succeeded, failed).chainDeferred(outcome)
        return outcome

    async def _register(self) -> str:
        headers: dict[bytes | str, bytes | str] = {
            "Authorization": f"Bearer {self._token}",
            "User-Agent": self._agent_name,
            "Content-Type": "application/json",
        }
        response: IResponse = await self._http.post(self._url, data=b"{}", headers=headers)
        body = await _read_limited(response, MAX_BODY_BYTES)
        status = response.code
        if 400 <= status < 500:
            text = body.decode("utf-8", "replace").strip()[:MAX_REJECTION_TEXT]
            raise RegistrationRejected(status, text)
        if status != 200:
            raise RegistrationFailed(f"HTTP {status}")
        try:
            answer = json.loads(body)
        except ValueError:
            raise RegistrationFailed("registration answer is not JSON") from None
        url = answer.get("url") if isinstance(answer, dict) else None
        if not isinstance(url, str) or not url.startswith(("ws://", "wss://")):
            raise RegistrationFailed("registration answer has no ws:// or wss:// url")
        return url


class _BodyTooLarge(Exception):
    pass


async def _read_limited(response: IResponse, limit: int) -> bytes:
    parts: list[bytes] = []
    size = 0

    def collect(data: bytes) -> None:
        nonlocal size
        size += len(data)
        if size > limit:
            raise _BodyTooLarge()
        parts.append(data)

    try:
        await treq.collect(response, collect)
    except _BodyTooLarge:
        raise RegistrationFailed(f"registration answer larger than {limit} bytes") from None
    return b"".join(parts)
