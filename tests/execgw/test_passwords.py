"""
Tests for L{codexgw.execgw.passwords}: registration tokens and bcrypt off the reactor thread
(C{exec-gateway.md} §6.4, §4.2 step 4, §9.1).

The thread pools here are fakes: one runs work at once, the other holds it until the test lets it
run, so the concurrency cap can be watched without threads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IReactorFromThreads
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from codexgw.execgw.passwords import (
    BCRYPT_CONCURRENCY,
    DUMMY_HASH,
    TokenHasher,
    new_registration_token,
)

TOKEN = "0123456789abcdef" * 4
# bcrypt answers "Invalid salt" at once for this, so held work runs without bcrypt's cost.
FAST_HASH = "not-a-bcrypt-hash"


@implementer(IReactorFromThreads)
class ImmediateReactor:
    """
    A reactor whose C{callFromThread} runs the call at once (the fake pools run on this thread).
    """

    def callFromThread(self, callable: Callable[..., Any], *args: object, **kwargs: object) -> None:
        """
        Run C{callable} now.
        """
        callable(*args, **kwargs)


class ImmediatePool(ThreadPool):
    """
    A thread pool that runs each call at once on the calling thread, counting them.
    """

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def callInThreadWithCallback(  # type: ignore[override]
        self,
        onResult: Callable[[bool, object], object] | None,
        func: Callable[..., object],
        *args: Any,
        **kw: Any,
    ) -> None:
        """
        Run C{func} and report its result like a worker thread would.
        """
        self.calls += 1
        try:
            result = func(*args, **kw)
        except BaseException as e:  # the pool reports every failure to onResult
            if onResult is not None:
                onResult(False, e)
            return
        if onResult is not None:
            onResult(True, result)


class HeldPool(ThreadPool):
    """
    A thread pool that queues calls until L{run_next}, so a test sees how many are in flight.
    """

    def __init__(self) -> None:
        super().__init__()
        self.queue: list[tuple[Callable[[bool, object], object] | None, Callable[[], object]]] = []
        self.most_in_flight = 0

    def callInThreadWithCallback(  # type: ignore[override]
        self,
        onResult: Callable[[bool, object], object] | None,
        func: Callable[..., object],
        *args: Any,
        **kw: Any,
    ) -> None:
        """
        Hold the call.
        """
        self.queue.append((onResult, lambda: func(*args, **kw)))
        self.most_in_flight = max(self.most_in_flight, len(self.queue))

    def run_next(self) -> None:
        """
        Run the oldest held call and report its result.
        """
        on_result, call = self.queue.pop(0)
        result = call()
        if on_result is not None:
            on_result(True, result)


def immediate_hasher() -> tuple[TokenHasher, ImmediatePool]:
    """
    Return a hasher whose work runs at once, and its pool.
    """
    pool = ImmediatePool()
    return TokenHasher(ImmediateReactor(), pool), pool


class RegistrationTokenTests(SynchronousTestCase):
    """
    New registration tokens: 32 random bytes as 64 lowercase hex characters.
    """

    def test_format(self) -> None:
        """
        Tokens are 64 lowercase hex characters and differ each time.
        """
        tokens = {new_registration_token() for _ in range(20)}
        self.assertEqual(len(tokens), 20)
        for token in tokens:
            self.assertRegex(token, r"\A[0-9a-f]{64}\Z")


class BcryptTests(SynchronousTestCase):
    """
    Hashing and checking, through the pool.
    """

    def test_roundTrip(self) -> None:
        """
        A token hashes to a cost-10 C{$2b$} hash that verifies it and rejects another token; each
        operation ran in the pool.
        """
        hasher, pool = immediate_hasher()
        hashed = self.successResultOf(hasher.hash_token(TOKEN))
        self.assertRegex(hashed, r"\A\$2b\$10\$[./A-Za-z0-9]{53}\Z")
        self.assertTrue(self.successResultOf(hasher.check_token(TOKEN, hashed)))
        self.assertFalse(self.successResultOf(hasher.check_token(TOKEN[:-1] + "0", hashed)))
        self.assertEqual(pool.calls, 3)

    def test_2aHashes(self) -> None:
        """
        A C{$2a$} hash of the token verifies too.
        """
        hasher, _ = immediate_hasher()
        hashed = self.successResultOf(hasher.hash_token(TOKEN))
        legacy = "$2a$" + hashed[4:]
        self.assertTrue(self.successResultOf(hasher.check_token(TOKEN, legacy)))
        self.assertFalse(self.successResultOf(hasher.check_token("wrong", legacy)))

    def test_malformedHash(self) -> None:
        """
        A stored hash bcrypt cannot read is a mismatch, not an error.
        """
        hasher, _ = immediate_hasher()
        for stored in ("", "garbage", "$2b$10$short", "$2b$99$" + "a" * 53, "$1$md5$x", "é" * 60):
            with self.subTest(stored=stored):
                self.assertFalse(self.successResultOf(hasher.check_token(TOKEN, stored)))

    def test_longToken(self) -> None:
        """
        A presented token over 72 bytes is a mismatch decided without bcrypt, even when its first 72
        bytes match; hashing one is refused.
        """
        hasher, pool = immediate_hasher()
        prefix = "x" * 72
        hashed = self.successResultOf(hasher.hash_token(prefix))
        calls = pool.calls
        self.assertTrue(self.successResultOf(hasher.check_token(prefix, hashed)))
        self.assertFalse(self.successResultOf(hasher.check_token(prefix + "y", hashed)))
        self.assertFalse(self.successResultOf(hasher.check_token("é" * 37, hashed)))
        self.assertEqual(pool.calls, calls + 1)
        self.assertRaises(ValueError, hasher.hash_token, prefix + "y")

    def test_oddTokens(self) -> None:
        """
        Tokens with NUL bytes or unpaired surrogates are checked without raising.
        """
        hasher, _ = immediate_hasher()
        hashed = self.successResultOf(hasher.hash_token(TOKEN))
        for token in ("a\x00b", "\udcff", ""):
            with self.subTest(token=token):
                self.assertFalse(self.successResultOf(hasher.check_token(token, hashed)))


class AbsentTests(SynchronousTestCase):
    """
    The dummy check for unknown executors.
    """

    def test_dummyHash(self) -> None:
        """
        The dummy hash is a cost-10 C{$2b$} hash, so checking against it costs what a real check costs.
        """
        self.assertRegex(DUMMY_HASH, r"\A\$2b\$10\$[./A-Za-z0-9]{53}\Z")

    def test_checkAbsent(self) -> None:
        """
        L{TokenHasher.check_absent} runs one bcrypt check in the pool and answers false.
        """
        hasher, pool = immediate_hasher()
        self.assertIs(self.successResultOf(hasher.check_absent(TOKEN)), False)
        self.assertEqual(pool.calls, 1)

    def test_checkAbsentLongToken(self) -> None:
        """
        For a token over 72 bytes the absent path is as quick as the present one: no bcrypt at all.
        """
        hasher, pool = immediate_hasher()
        self.assertIs(self.successResultOf(hasher.check_absent("x" * 73)), False)
        self.assertEqual(pool.calls, 0)


class ConcurrencyTests(SynchronousTestCase):
    """
    At most four bcrypt operations are handed to the pool at once; the rest wait their turn.
    """

    def test_capOfFour(self) -> None:
        """
        Ten checks: four reach the pool, and as each finishes the next waiting one starts; every
        result arrives, in order.
        """
        self.assertEqual(BCRYPT_CONCURRENCY, 4)
        pool = HeldPool()
        hasher = TokenHasher(ImmediateReactor(), pool)
        results = [hasher.check_token(TOKEN, FAST_HASH) for _ in range(10)]
        self.assertEqual(len(pool.queue), 4)
        fired: list[int] = []

        def record(_: bool, i: int) -> None:
            fired.append(i)

        for i, d in enumerate(results):
            d.addCallback(record, i)
        for step in range(10):
            pool.run_next()
            self.assertEqual(len(pool.queue), min(4, 10 - step - 1))
        self.assertEqual(fired, list(range(10)))
        self.assertEqual(pool.most_in_flight, 4)

    def test_hashesShareTheCap(self) -> None:
        """
        Hashing counts against the same cap as checking.
        """
        pool = HeldPool()
        hasher = TokenHasher(ImmediateReactor(), pool)
        for _ in range(3):
            hasher.check_token(TOKEN, FAST_HASH)
        hashed = hasher.hash_token(TOKEN)
        waiting = hasher.check_absent(TOKEN)
        self.assertEqual(len(pool.queue), 4)
        for _ in range(3):
            pool.run_next()
        self.assertEqual(len(pool.queue), 2)
        pool.run_next()
        self.assertTrue(self.successResultOf(hashed).startswith("$2b$10$"))
        self.assertNoResult(waiting)
        pool.run_next()
        self.assertIs(self.successResultOf(waiting), False)

    def test_cancelKeepsSlotUntilWorkEnds(self) -> None:
        """
        Cancelling a running check fails its Deferred at once, but its slot stays taken until the
        bcrypt work ends; a cancelled waiting check still gives its turn back in order.
        """
        pool = HeldPool()
        hasher = TokenHasher(ImmediateReactor(), pool)
        running = [hasher.check_token(TOKEN, FAST_HASH) for _ in range(4)]
        waiting = hasher.check_token(TOKEN, FAST_HASH)
        running[0].cancel()
        self.failureResultOf(running[0], CancelledError)
        self.assertEqual(len(pool.queue), 4)
        self.assertNoResult(waiting)
        pool.run_next()  # the cancelled check's work ends; its result is dropped
        self.assertEqual(len(pool.queue), 4)
        while pool.queue:
            pool.run_next()
        self.assertIs(self.successResultOf(waiting), False)
        self.assertEqual(pool.most_in_flight, 4)

    def test_separateHashersSeparateCaps(self) -> None:
        """
        The cap belongs to a hasher: the service makes one per process.
        """
        pool = HeldPool()
        first = TokenHasher(ImmediateReactor(), pool)
        second = TokenHasher(ImmediateReactor(), pool, concurrency=1)
        for _ in range(5):
            first.check_token(TOKEN, FAST_HASH)
            second.check_token(TOKEN, FAST_HASH)
        self.assertEqual(len(pool.queue), 5)


class TokenShapeTests(SynchronousTestCase):
    """
    Registration tokens as they are checked: a fresh token verifies against its own hash.
    """

    def test_newTokenRoundTrip(self) -> None:
        """
        A new registration token hashes and verifies (64 bytes, under bcrypt's 72-byte limit).
        """
        hasher, _ = immediate_hasher()
        token = new_registration_token()
        self.assertLessEqual(len(token.encode()), 72)
        hashed = self.successResultOf(hasher.hash_token(token))
        self.assertTrue(self.successResultOf(hasher.check_token(token, hashed)))
