"""
The contracts between the parts of envtools (C{envtools.md} §1): what the tools need from a
connection to one exec-server (L{IExecServerClient}) and from the pool of them (L{IBridgePool}), what
they need from the name resolver (L{IResolver}), and the three hooks a front-end binds (§1.3):
L{ICapTokenProvider}, L{IResolverSource}, L{IRelayCreator}.

Errors carry the spec's exact texts in C{str()}: tools put them into their results as they are.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

#: The default timeout of a bridge call (§4.5).
DEFAULT_CALL_TIMEOUT = 60.0


class CallError(Exception):
    """
    A call to an exec-server failed. C{str()} is the spec's text: C{<method>: <message>
    (code=<code>)}, C{<method>: timed out}, C{relay reset: <reason>}, C{bridge: connection closed},
    C{<method>: message too large (<n> bytes > 67108864)}, a relay failure text, …

    @ivar code: the JSON-RPC error code when the exec-server answered with an error, else C{None}.
    """

    def __init__(self, text: str, code: int | None = None) -> None:
        super().__init__(text)
        self.code = code


class DialError(Exception):
    """
    A bridge client could not be opened: C{bridge dial: …}, C{initialize: …}, C{bridge: exe_id
    required}, C{bridge: pool closed}.
    """


class ResolveError(Exception):
    """
    A name could not be resolved (§5): C{env name required}, C{refresh: <error>}, C{no environment
    named "<name>" (run list_environments to see what's available)}.
    """


class RelayUnavailable(Exception):
    """
    The relay creator's "relay unavailable": the byte relay is not enabled (§1.3).
    """


class RelayError(Exception):
    """
    The relay creator failed otherwise; C{str()} is its error text.
    """


class IExecServerClient(Interface):
    """
    One open exec-server stream (a bridge client, §4): JSON-RPC calls after the handshake.
    """

    ended = Attribute("C{None} while usable; the end text (e.g. C{relay reset: idle}) once ended.")

    def call(method: str, params: Any, timeout: float = DEFAULT_CALL_TIMEOUT) -> Deferred[Any]:
        """
        Send a request and fire with its C{result}; fail with L{CallError} (§4.5). Calls may overlap.
        """

    def session_opened() -> None:
        """
        An exec session now lives on this client (heartbeats run while any does, §4.6).
        """

    def session_closed() -> None:
        """
        An exec session of this client was forgotten.
        """

    def close() -> None:
        """
        End the client (idempotent): websocket closed with 1000; pending calls fail.
        """


class IBridgePool(Interface):
    """
    The bridge clients of one context, by exe id (§4.8).
    """

    def get(exe_id: str) -> Deferred[IExecServerClient]:
        """
        The live client of C{exe_id}, dialling one if needed; fails with L{DialError}.
        """

    def close() -> None:
        """
        Close every client; later C{get}s fail with C{bridge: pool closed}.
        """


@dataclass(frozen=True)
class ExecutorEntry:
    """
    One connected executor as the resolver source lists it (C{exec-gateway.md} §4.5).

    @ivar raw: the object as received (extra members kept).
    """

    exe_id: str
    name: str
    description: str
    is_default: bool
    last_seen_at: str | None
    raw: dict[str, Any]


class IResolver(Interface):
    """
    Environment names → exe ids (§5).
    """

    def resolve(name: str) -> Deferred[str]:
        """
        The exe id of C{name}; fails with L{ResolveError}.
        """

    def refresh() -> Deferred[list[ExecutorEntry]]:
        """
        List again (or join the listing in flight); fails with the source's error.
        """


class ICapTokenProvider(Interface):
    """
    Hook: the cap token for the next dial (§4.9).
    """

    def token(force: bool) -> Deferred[str]:
        """
        The token to present; C{force} after a C{401 token expired}. Never fails.
        """


class IResolverSource(Interface):
    """
    Hook: the connected executors of the workspace, in binding order (§1.3).
    """

    def list() -> Deferred[list[dict[str, Any]]]:
        """
        The ConnectedExecutor objects; fails with an exception whose C{str()} is the error text.
        """


@dataclass(frozen=True)
class RelayTicket:
    """
    What the relay creator returns.
    """

    ticket: str
    upload_url: str
    download_url: str


class IRelayCreator(Interface):
    """
    Hook: relay tickets for C{copy_path}'s http transport (§1.3).
    """

    def create_relay(
        source_exe_id: str, dest_exe_id: str, ttl_seconds: int, max_bytes: int
    ) -> Deferred[RelayTicket]:
        """
        A relay ticket; fails with L{RelayUnavailable} or L{RelayError}.
        """


@dataclass(frozen=True)
class ToolResult:
    """
    A tool's result (§7.1): one text and whether it is an error.
    """

    text: str
    is_error: bool = False

    def to_json(self) -> dict[str, object]:
        """
        C{{"content":[{"type":"text","text":…}],"isError":…}}.
        """
        return {"content": [{"type": "text", "text": self.text}], "isError": self.is_error}


def compact_json(value: object) -> str:
    """
    Compact JSON text, keys in the order given, non-ASCII written as itself (§7.1 "Text").
    """
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
