"""
Registration tokens and their bcrypt hashes (C{exec-gateway.md} §6.4, §4.2 step 4, §4.4, §9.1).

A registration token is 32 random bytes written as 64 lowercase hex characters; the store keeps its
bcrypt hash (cost 10, C{$2b$}; C{$2a$} hashes verify too). bcrypt is deliberately slow, so every hash and
check runs in a thread pool, never on the reactor thread, and at most four run at once per
L{TokenHasher} (excess requests wait their turn). The service makes one L{TokenHasher} for the process,
which makes the cap process-wide.

Decisions where the spec is silent:
 - bcrypt only reads the first 72 bytes of a password and bcrypt 5 refuses longer ones. A presented
   token over 72 bytes (UTF-8) is a mismatch, decided without running bcrypt: registration tokens are
   64 ASCII characters, so no valid token is that long, and a truncating check would accept any string
   that merely starts with the right 72 bytes. Such a token takes the same path in L{check_absent}, so
   an unknown executor and a known one still answer alike. L{TokenHasher.hash_token} refuses such
   tokens with C{ValueError}.
 - A stored hash bcrypt cannot parse (corrupt row, other algorithm) is a mismatch, not an error: the
   client sees the same 401 as for a wrong token.
 - Cancelling a returned Deferred does not interrupt the bcrypt work nor free its concurrency slot
   early (a thread cannot be stopped); the result is dropped when it arrives.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Final, TypeVar

import bcrypt
from twisted.internet.defer import Deferred, DeferredSemaphore, succeed
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

#: bcrypt cost factor of new hashes.
BCRYPT_COST: Final = 10
#: bcrypt checks and hashes running at once, at most (§9.1).
BCRYPT_CONCURRENCY: Final = 4
#: bcrypt ignores password bytes after this many.
BCRYPT_MAX_BYTES: Final = 72
#: A cost-10 C{$2b$} hash of a random token nobody kept: the "absent executor" check runs against it
#: so that an unknown executor costs as much time as a wrong token.
DUMMY_HASH: Final = "$2b$10$xv4Z8.lFaJY.a2u0oW1ZoO4HhC6BVTlQUYJB.sJ0bWsfZy.pc604a"

_T = TypeVar("_T")


def new_registration_token() -> str:
    """
    Return a fresh registration token: 32 random bytes as 64 lowercase hex characters.
    """
    return secrets.token_hex(32)


def _hash(password: bytes) -> str:
    return bcrypt.hashpw(password, bcrypt.gensalt(rounds=BCRYPT_COST, prefix=b"2b")).decode("ascii")


def _check(password: bytes, stored_hash: bytes) -> bool:
    try:
        return bcrypt.checkpw(password, stored_hash)
    except ValueError:  # "Invalid salt": the stored hash is not a bcrypt hash bcrypt can read
        return False


def _detached(work: Deferred[_T]) -> Deferred[_T]:
    """
    Return a Deferred with C{work}'s result whose cancellation does not propagate to C{work}.
    """
    view: Deferred[_T] = Deferred()

    def deliver(result: _T | Failure) -> None:
        # A cancelled view has already fired with CancelledError; the late result is dropped.
        if view.called:
            return
        if isinstance(result, Failure):
            view.errback(result)
        else:
            view.callback(result)

    work.addBoth(deliver)
    return view


class TokenHasher:
    """
    bcrypt hashing and checking of registration tokens in a thread pool, at most
    L{BCRYPT_CONCURRENCY} at a time.
    """

    def __init__(
        self,
        reactor: IReactorFromThreads,
        pool: ThreadPool,
        concurrency: int = BCRYPT_CONCURRENCY,
    ) -> None:
        """
        @param reactor: delivers the results back to the reactor thread.
        @param pool: runs the bcrypt work, e.g. C{reactor.getThreadPool()}.
        @param concurrency: how many bcrypt operations may run at once.
        """
        self._reactor = reactor
        self._pool = pool
        self._semaphore = DeferredSemaphore(concurrency)

    def _run(self, f: Callable[[bytes, bytes], _T], password: bytes, other: bytes) -> Deferred[_T]:
        return _detached(
            self._semaphore.run(deferToThreadPool, self._reactor, self._pool, f, password, other)
        )

    def hash_token(self, token: str) -> Deferred[str]:
        """
        Hash C{token} with bcrypt (cost 10, C{$2b$}).

        @return: a Deferred firing with the hash as text.
        @raise ValueError: when C{token} is longer than 72 bytes in UTF-8 (bcrypt would ignore the rest).
        """
        password = token.encode("utf-8")
        if len(password) > BCRYPT_MAX_BYTES:
            raise ValueError(f"token longer than {BCRYPT_MAX_BYTES} bytes cannot be hashed with bcrypt")
        return self._run(lambda p, _: _hash(p), password, b"")

    def check_token(self, token: str, stored_hash: str) -> Deferred[bool]:
        """
        Check C{token} against a stored bcrypt hash (C{$2b$} or C{$2a$}).

        @return: a Deferred firing with C{True} on a match; C{False} on a mismatch, for a token over 72
            bytes, and for a stored hash bcrypt cannot read.
        """
        password = token.encode("utf-8", "surrogatepass")
        if len(password) > BCRYPT_MAX_BYTES:
            return succeed(False)
        return self._run(_check, password, stored_hash.encode("utf-8", "surrogatepass"))

    def check_absent(self, token: str) -> Deferred[bool]:
        """
        Spend one bcrypt check on C{token} against L{DUMMY_HASH}, for an executor that does not exist,
        so that it takes as long as a wrong token for a real one.

        @return: a Deferred firing with C{False}.
        """
        return self.check_token(token, DUMMY_HASH).addCallback(lambda _: False)
