"""
Read steps (C{envtools.md} §7.2): the only way the tools read process output.

A read step is one C{process/read} C{{"processId","afterSeq","maxBytes","waitMs"}} with C{waitMs =
min(250, the wait wanted)} — the exec-server answers one request at a time per stream, so a longer wait
would hold back every other call on it (§2.1). C{afterSeq} follows the polling rule of §2.4: C{null} for
the first read, then the previous reply's C{nextSeq − 1}.

L{ReadSteps} also counts the sequence numbers skipped inside each step (between C{afterSeq} and the
first chunk, and between consecutive chunks, §7.4 step 5). One skipped number may be the exit event;
any other was output the exec-server discarded (§2.4 "Retention").

Decisions where the spec is silent:
 - L{ReadSteps.discarded} counts the exit event only where it can be: gaps in steps whose reply still
   said C{exited: false} cannot contain it (the exit event exists as soon as C{exited} is true), so they
   count whole; of the gaps in steps that reported C{exited: true}, one number is taken for the exit
   event. This agrees with §7.4 step 5 whenever the exit event was skipped, and still reports discarded
   output that was skipped before the process exited.
 - A wanted wait below 0 is sent as C{waitMs} 0; fractions of a millisecond are rounded up.
 - A reply whose shape is not the §2.3 one (chunks not a list, a chunk without an integer C{seq}, a
   C{chunk} that is not base64, C{nextSeq} not an integer) fails the step with L{CallError}
   C{process/read: malformed result: <detail>}.
"""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass
from typing import Any, Final

from codexgw.envtools.interfaces import CallError, IExecServerClient

#: The longest C{waitMs} envtools sends (§2.1, §9), in milliseconds.
MAX_WAIT_MS: Final = 250


@dataclass(frozen=True)
class OutputChunk:
    """
    One decoded chunk of a C{process/read} result.
    """

    seq: int
    stream: str
    data: bytes


def _malformed(detail: str) -> CallError:
    return CallError(f"process/read: malformed result: {detail}")


def decoded_chunks(result: dict[str, Any]) -> list[OutputChunk]:
    """
    The chunks of a C{process/read} result, decoded.

    @raise CallError: the result is malformed.
    """
    raw = result.get("chunks")
    if not isinstance(raw, list):
        raise _malformed("chunks must be a list")
    chunks = []
    for item in raw:
        if not isinstance(item, dict):
            raise _malformed("chunk must be an object")
        seq = item.get("seq")
        stream = item.get("stream")
        encoded = item.get("chunk")
        if not isinstance(seq, int) or isinstance(seq, bool):
            raise _malformed("seq must be an integer")
        if not isinstance(stream, str) or not isinstance(encoded, str):
            raise _malformed("stream and chunk must be strings")
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as error:
            raise _malformed(f"chunk: {error}") from error
        chunks.append(OutputChunk(seq, stream, data))
    return chunks


class ReadSteps:
    """
    The read steps of one process on one client.

    @ivar after_seq: the C{afterSeq} of the next step (C{None} = from the start).
    @ivar skipped: the sequence numbers skipped inside the steps so far (§7.4 step 5).
    @ivar last: the result of the latest step, or C{None} before the first.
    @ivar last_chunks: the decoded chunks of the latest step.
    """

    def __init__(
        self,
        client: IExecServerClient,
        process_id: str,
        max_bytes: int,
        after_seq: int | None = None,
    ) -> None:
        """
        @param max_bytes: the C{maxBytes} of every step.
        @param after_seq: the C{afterSeq} of the first step.
        """
        self._client = client
        self._process_id = process_id
        self._max_bytes = max_bytes
        self.after_seq = after_seq
        self.skipped = 0
        self._skipped_running = 0
        self.last: dict[str, Any] | None = None
        self.last_chunks: list[OutputChunk] = []

    @property
    def discarded(self) -> int:
        """
        How many skipped numbers were output the exec-server discarded (see the module docstring).
        """
        after_exit = self.skipped - self._skipped_running
        return self._skipped_running + max(0, after_exit - 1)

    async def step(self, wait_ms: float, advance: bool = True) -> dict[str, Any]:
        """
        One C{process/read}.

        @param wait_ms: the wait wanted, in milliseconds; C{waitMs} is at most 250.
        @param advance: whether the next step continues after this one (the polling rule); C{False}
            keeps the same C{afterSeq} (C{read_output}, §7.7).
        @return: the result as received.
        @raise CallError: the call failed or its result is malformed.
        """
        wait = min(MAX_WAIT_MS, max(0, math.ceil(wait_ms)))
        params = {
            "processId": self._process_id,
            "afterSeq": self.after_seq,
            "maxBytes": self._max_bytes,
            "waitMs": wait,
        }
        result = await self._client.call("process/read", params)
        if not isinstance(result, dict):
            raise _malformed("result must be an object")
        chunks = decoded_chunks(result)
        next_seq = result.get("nextSeq")
        if not isinstance(next_seq, int) or isinstance(next_seq, bool):
            raise _malformed("nextSeq must be an integer")
        previous = self.after_seq or 0
        gaps = 0
        for chunk in chunks:
            gaps += max(0, chunk.seq - previous - 1)
            previous = chunk.seq
        self.skipped += gaps
        if not result.get("exited"):
            self._skipped_running += gaps
        if advance:
            self.after_seq = max(0, next_seq - 1)
        self.last = result
        self.last_chunks = chunks
        return result
