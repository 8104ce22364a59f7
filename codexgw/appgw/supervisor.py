"""
The supervisor: at most one C{codex app-server} per workspace, with its CODEX_HOME restored before the
spawn and saved after the exit (C{app-gateway.md} §5, §6.6).

Every lifecycle step of a workspace (spawn, stop, crash cleanup, startup recovery upload) runs under
that workspace's FIFO L{DeferredLock}; only C{ensure} on a live entry skips the lock. Admission
(§5.7) is a count of process slots (reserved at step 2 of C{ensure}, released when the process has
exited or the spawn failed before one existed) and a FIFO L{DeferredSemaphore} of spawn-concurrency
slots. Processes come from an L{IAppServerLauncher} (the real one spawns codex; unit tests use
L{codexgw.testing.fakelauncher}); all timers run on the injected clock.

Decisions where the spec is silent:
 - C{ensure} after shutdown began fails with L{SupervisorStopping} (C{gateway shutting down}), which the
   TUI proxy reports as 1011 and the broker as C{wsDisconnect}.
 - Cancelling an C{ensure} (the caller went away) removes it from the lock or spawn queue; once its
   spawn has started, the spawn completes (later callers get the process) and only that caller's
   Deferred is cancelled.
 - Uploads run at most 4 at a time always, not only during shutdown: a burst of idle stops must not
   open dozens of object-store transfers at once.
 - A failure of the home's removal after a successful upload is logged; the record is removed anyway
   (the object store holds the newer copy; a stale directory without a record is removed at the next
   start or before the next restore).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Final, Literal, NoReturn, TypeVar

from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredLock,
    DeferredSemaphore,
    fail,
    succeed,
)
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from codexgw.appgw.captoken import CapTokenMinter
from codexgw.appgw.clients import IExecGatewayClient
from codexgw.appgw.codexhome import HomeDirs, write_config
from codexgw.appgw.launcher import IAppServerLauncher, IAppServerProcess, LaunchError
from codexgw.appgw.loopback import LoopbackTokens
from codexgw.appgw.metrics import AppMetrics
from codexgw.appgw.objectstore import IObjectStore
from codexgw.appgw.snapshot import (
    DEFAULT_MAX_SNAPSHOT_BYTES,
    RestoreDownloadError,
    RestoreOutcome,
    restore_home,
    snapshot_home,
)
from codexgw.appgw.spawnplan import SpawnPlan, SpawnPlanner
from codexgw.appgw.staterecords import StateRecords
from codexgw.appgw.supervision import (
    AppServerEnd,
    AppServerHandle,
    EndReason,
    EnsureError,
    IAttachment,
    ISupervisor,
    SpawnCapacityError,
    SupervisorCounts,
    SupervisorStopping,
)

_log = Logger()
_T = TypeVar("_T")

#: §5.5 step 2: SIGTERM → this long → SIGKILL.
STOP_GRACE: Final = 10.0
#: §5.9: the whole graceful stop.
SHUTDOWN_BUDGET: Final = 30.0
#: Uploads in flight at once (§5.9 step 3).
MAX_UPLOADS: Final = 4
#: §5.11: the reaper's tick is min(60 s, idle / 4), at least 50 ms.
MAX_REAP_TICK: Final = 60.0
MIN_REAP_TICK: Final = 0.05

State = Literal["starting", "running", "stopping"]


def _log_failure(failure: Failure, message: str, workspace_id: str) -> None:
    _log.failure(message, failure, workspace_id=workspace_id)


@dataclass(eq=False)
class _Entry:
    """
    One workspace's app-server as the supervisor tracks it (§5.1).
    """

    workspace_id: str
    state: State = "starting"
    process: IAppServerProcess | None = None
    handle: AppServerHandle | None = None
    plan: SpawnPlan | None = None
    reused_home: bool = False
    reserved: bool = False
    last_activity: float = 0.0
    attachments: list[IAttachment] = field(default_factory=list)
    upload: Deferred[None] | None = None


@implementer(ISupervisor)
class Supervisor:
    """
    The real L{ISupervisor}: spawns, watches, reaps and stops app-servers.
    """

    def __init__(
        self,
        *,
        clock: IReactorTime,
        reactor: Any,
        homes: HomeDirs,
        store: IObjectStore,
        records: StateRecords,
        launcher: IAppServerLauncher,
        planner: SpawnPlanner,
        loopback_tokens: LoopbackTokens,
        minter: CapTokenMinter,
        exec_gateway: IExecGatewayClient,
        metrics: AppMetrics,
        max_spawns: int,
        spawn_concurrency: int,
        idle_shutdown: float,
        start_time_of: Callable[[int], str | None],
        max_snapshot_bytes: int = DEFAULT_MAX_SNAPSHOT_BYTES,
    ) -> None:
        """
        @param clock: every timer (stop grace, reaper, shutdown budget) and the activity clock.
        @param reactor: the running reactor, for the snapshot/restore thread pool.
        @param idle_shutdown: C{CXG_IDLE_SHUTDOWN} in seconds; 0 disables the reaper.
        @param start_time_of: the process start time of a pid for its state record (§5.8).
        """
        self._clock = clock
        self._reactor = reactor
        self._homes = homes
        self._store = store
        self._records = records
        self._launcher = launcher
        self._planner = planner
        self._loopback_tokens = loopback_tokens
        self._minter = minter
        self._exec_gateway = exec_gateway
        self._metrics = metrics
        self._max_spawns = max_spawns
        self._spawn_slots = DeferredSemaphore(spawn_concurrency)
        self._upload_slots = DeferredSemaphore(MAX_UPLOADS)
        self._idle_shutdown = idle_shutdown
        self._start_time_of = start_time_of
        self._max_snapshot_bytes = max_snapshot_bytes
        self._entries: dict[str, _Entry] = {}
        self._locks: dict[str, DeferredLock] = {}
        self._pins: dict[str, int] = {}
        self._reserved = 0
        self._live: set[int] = set()
        self._queued = 0
        self._stopping = False
        self._revokes: set[Deferred[bool]] = set()
        self._reaper: LoopingCall | None = None

    # --- ISupervisor ------------------------------------------------------------------------------

    def ensure(self, workspace_id: str) -> Deferred[AppServerHandle]:
        """
        See L{ISupervisor.ensure} (§5.3).
        """
        entry = self._entries.get(workspace_id)
        if entry is not None and entry.state == "running" and entry.handle is not None:
            self.touch(workspace_id)
            return succeed(entry.handle)
        if self._stopping:
            return fail(SupervisorStopping())
        waiting: list[Deferred[Any]] = []

        def give_up(outer: Deferred[AppServerHandle]) -> None:
            # Only a wait for the lock or for a spawn slot is abandoned; a spawn under way goes on.
            for d in waiting:
                d.cancel()

        outer: Deferred[AppServerHandle] = Deferred(give_up)
        inner = Deferred.fromCoroutine(self._ensure(workspace_id, waiting))

        def deliver(result: AppServerHandle | Failure) -> None:
            # A caller that went away has its Deferred cancelled already; failures were logged.
            if not outer.called:
                outer.callback(result)

        inner.addBoth(deliver)
        return outer

    def attach(self, handle: AppServerHandle, attachment: IAttachment) -> bool:
        """
        See L{ISupervisor.attach}.
        """
        entry = self._entries.get(handle.workspace_id)
        if entry is None or entry.handle is not handle or entry.state != "running":
            return False
        entry.attachments.append(attachment)
        return True

    def detach(self, handle: AppServerHandle, attachment: IAttachment) -> None:
        """
        See L{ISupervisor.detach}.
        """
        entry = self._entries.get(handle.workspace_id)
        if entry is not None and entry.handle is handle and attachment in entry.attachments:
            entry.attachments.remove(attachment)

    def touch(self, workspace_id: str) -> None:
        """
        See L{ISupervisor.touch}.
        """
        entry = self._entries.get(workspace_id)
        if entry is not None:
            entry.last_activity = self._clock.seconds()

    def pin(self, workspace_id: str) -> Callable[[], None]:
        """
        See L{ISupervisor.pin}.
        """
        self._pins[workspace_id] = self._pins.get(workspace_id, 0) + 1
        released = False

        def unpin() -> None:
            nonlocal released
            if released:
                return
            released = True
            left = self._pins[workspace_id] - 1
            if left:
                self._pins[workspace_id] = left
            else:
                del self._pins[workspace_id]
            self.touch(workspace_id)

        return unpin

    # --- inspection ---------------------------------------------------------------------------------

    def counts(self) -> SupervisorCounts:
        """
        Live processes and queued ensures, for C{/metrics}.
        """
        return SupervisorCounts(live=len(self._live), queued=self._queued)

    def handle_of(self, workspace_id: str) -> AppServerHandle | None:
        """
        The workspace's live handle, if it has a running process.
        """
        entry = self._entries.get(workspace_id)
        return entry.handle if entry is not None and entry.state == "running" else None

    # --- locking ------------------------------------------------------------------------------------

    def _lock(self, workspace_id: str) -> DeferredLock:
        lock = self._locks.get(workspace_id)
        if lock is None:
            lock = self._locks[workspace_id] = DeferredLock()
        return lock

    def _unlock(self, workspace_id: str) -> None:
        lock = self._locks[workspace_id]
        lock.release()
        # release() may run the next holder to completion, which can drop the lock itself.
        if not lock.locked and not lock.waiting and self._locks.get(workspace_id) is lock:
            del self._locks[workspace_id]

    def locked(
        self, workspace_id: str, work: Callable[[], Coroutine[Deferred[Any], Any, _T]]
    ) -> Deferred[_T]:
        """
        Run C{work} under the workspace's lock (§5.2).
        """

        async def run() -> _T:
            await self._lock(workspace_id).acquire()
            try:
                return await work()
            finally:
                self._unlock(workspace_id)

        return Deferred.fromCoroutine(run())

    # --- ensure -------------------------------------------------------------------------------------

    async def _ensure(self, workspace_id: str, waiting: list[Deferred[Any]]) -> AppServerHandle:
        acquiring = self._lock(workspace_id).acquire()
        waiting.append(acquiring)
        try:
            await acquiring
        finally:
            waiting.remove(acquiring)
        try:
            entry = self._entries.get(workspace_id)
            if entry is not None and entry.state == "running" and entry.handle is not None:
                entry.last_activity = self._clock.seconds()
                return entry.handle
            if self._stopping:
                raise SupervisorStopping()
            if len(self._live) + self._reserved >= self._max_spawns:
                self._metrics.spawns.labels(result="capacity").inc()
                _log.warn("spawn capacity reached", workspace_id=workspace_id, live=len(self._live))
                raise SpawnCapacityError(len(self._live) + self._reserved)
            entry = _Entry(workspace_id, reserved=True)
            self._reserved += 1
            self._entries[workspace_id] = entry
            try:
                slot = self._spawn_slots.acquire()
                waiting.append(slot)
                self._queued += 1
                self._metrics.spawn_queue.set(self._queued)
                try:
                    await slot
                finally:
                    waiting.remove(slot)
                    self._queued -= 1
                    self._metrics.spawn_queue.set(self._queued)
                try:
                    return await self._spawn(entry)
                finally:
                    self._spawn_slots.release()
            except BaseException:
                if self._entries.get(workspace_id) is entry:
                    del self._entries[workspace_id]
                raise
            finally:
                self._release_reservation(entry)
        finally:
            self._unlock(workspace_id)

    async def _spawn(self, entry: _Entry) -> AppServerHandle:
        workspace_id = entry.workspace_id
        started = self._clock.seconds()
        home = self._homes.path_for(workspace_id)
        try:
            plan = await self._planner.plan(workspace_id, home)
        except Exception as e:
            self._spawn_failed(workspace_id, f"config builder: {e}")
        entry.plan = plan
        try:
            entry.reused_home = await self._prepare_home(workspace_id, home)
            try:
                write_config(home, plan.config_text)
            except Exception as e:
                await self._discard_home(entry)
                self._spawn_failed(workspace_id, f"write config: {e}")

            def spawned(process: IAppServerProcess) -> None:
                entry.process = process
                self._live.add(process.pid)
                self._release_reservation(entry)
                self._metrics.app_servers.set(len(self._live))
                self._records.write_running(
                    workspace_id, process.pid, self._start_time_of(process.pid) or ""
                )
                process.exited().addCallback(self._process_exited, entry, process)

            try:
                process = await self._launcher.launch(workspace_id, plan.environment, plan.cwd, spawned)
            except LaunchError as e:
                await self._discard_home(entry)
                self._spawn_failed(workspace_id, f"spawn: {e}")
            except BaseException:
                await self._discard_home(entry)
                raise
        except BaseException:
            self._loopback_tokens.revoke(plan.loopback_token)
            self._minter.forget(plan.turn_id)
            raise
        if process.has_exited():
            # It died between readiness and now: report it like any spawn failure.
            self._loopback_tokens.revoke(plan.loopback_token)
            await self._discard_home(entry)
            self._spawn_failed(workspace_id, "spawn: app-server exited during startup")
        entry.handle = AppServerHandle(workspace_id, process.pid, process.ws_url, process.http_url)
        entry.state = "running"
        entry.last_activity = self._clock.seconds()
        self._metrics.spawns.labels(result="ok").inc()
        self._metrics.spawn_seconds.observe(self._clock.seconds() - started)
        _log.info(
            "app-server spawned: workspace {workspace_id}, pid {pid}",
            workspace_id=workspace_id,
            pid=process.pid,
            ws_url=process.ws_url,
            reused_home=entry.reused_home,
        )
        return entry.handle

    def _release_reservation(self, entry: _Entry) -> None:
        # The slot reserved at step 2 passes to the process once it exists (self._live).
        if entry.reserved:
            entry.reserved = False
            self._reserved -= 1

    def _spawn_failed(self, workspace_id: str, message: str) -> NoReturn:
        self._metrics.spawns.labels(result="error").inc()
        _log.error("spawn failed: {message}", message=message, workspace_id=workspace_id)
        raise EnsureError(message)

    async def _prepare_home(self, workspace_id: str, home: str) -> bool:
        """
        §5.3 step 5: reuse an C{upload-pending} home, else restore a fresh one. Returns whether the
        home was reused.
        """
        record = self._records.read(workspace_id)
        if record is not None and record.state == "upload-pending" and os.path.isdir(home):
            return True
        try:
            if os.path.lexists(home):
                self._homes.remove_home(home)
            self._records.remove(workspace_id)
        except Exception as e:
            self._spawn_failed(workspace_id, f"restore: {e}")
        try:
            outcome = await restore_home(
                self._store, self._homes, workspace_id, self._reactor, self._max_snapshot_bytes
            )
        except RestoreDownloadError as e:
            self._metrics.home_transfers.labels(op="restore", result="error").inc()
            self._remove_quietly(home)
            _log.error("CODEX_HOME restore failed", workspace_id=workspace_id, error=str(e))
            self._spawn_failed(workspace_id, f"object store download: {e}")
        except Exception as e:
            self._metrics.home_transfers.labels(op="restore", result="error").inc()
            self._remove_quietly(home)
            _log.error("CODEX_HOME restore failed", workspace_id=workspace_id, error=str(e))
            self._spawn_failed(workspace_id, f"restore: {e}")
        result = "ok" if outcome is RestoreOutcome.RESTORED else "not_found"
        self._metrics.home_transfers.labels(op="restore", result=result).inc()
        return False

    async def _discard_home(self, entry: _Entry) -> None:
        """
        After a failed spawn (§5.3 step 8): a reused C{upload-pending} home is kept with its record
        set back; a freshly restored one is removed with its record.
        """
        if entry.reused_home:
            self._records.set_upload_pending(entry.workspace_id)
            return
        self._remove_quietly(self._homes.path_for(entry.workspace_id))
        self._records.remove(entry.workspace_id)

    def _remove_quietly(self, home: str) -> None:
        try:
            self._homes.remove_home(home)
        except Exception as e:
            _log.warn("could not remove CODEX_HOME {home}: {error}", home=home, error=str(e))

    # --- exits --------------------------------------------------------------------------------------

    def _process_exited(self, status: str, entry: _Entry, process: IAppServerProcess) -> None:
        self._live.discard(process.pid)
        self._metrics.app_servers.set(len(self._live))
        if entry.state != "running" or self._entries.get(entry.workspace_id) is not entry:
            return  # a stop in progress (or a failed spawn) handles it
        entry.state = "stopping"
        _log.warn(
            "app-server exited unexpectedly: workspace {workspace_id}, pid {pid}, {exit_status}",
            workspace_id=entry.workspace_id,
            pid=process.pid,
            exit_status=status,
        )
        self._metrics.exits.labels(reason="crash").inc()
        end = AppServerEnd("crash", status)
        if entry.handle is not None:
            entry.handle.ended = end

        async def clean_up() -> None:
            process.signal_group(signal.SIGKILL)
            await self._retire(entry, end)

        self.locked(entry.workspace_id, clean_up).addErrback(
            lambda f: _log.failure("crash cleanup failed", f, workspace_id=entry.workspace_id)
        )

    def stop(self, workspace_id: str, reason: EndReason) -> Deferred[None]:
        """
        Stop the workspace's app-server (§5.5); a missing entry is a no-op.
        """

        async def stop_locked() -> None:
            entry = self._entries.get(workspace_id)
            if entry is None or entry.state != "running" or entry.process is None:
                return
            entry.state = "stopping"
            end = AppServerEnd(reason)
            if entry.handle is not None:
                entry.handle.ended = end
            process = entry.process
            _log.info("app-server stopping", workspace_id=workspace_id, pid=process.pid, reason=reason)
            self._tell_attachments(entry, end)
            process.signal_group(signal.SIGTERM)
            if not process.has_exited():
                exited = process.exited()
                try:
                    await exited.addTimeout(STOP_GRACE, self._clock)
                except Exception:
                    process.signal_group(signal.SIGKILL)
                    await process.exited()
            process.signal_group(signal.SIGKILL)
            self._metrics.exits.labels(reason=reason).inc()
            _log.info(
                "app-server stopped: workspace {workspace_id} ({reason})",
                workspace_id=workspace_id,
                pid=process.pid,
                reason=reason,
            )
            await self._retire(entry, end)

        return self.locked(workspace_id, stop_locked)

    def _tell_attachments(self, entry: _Entry, end: AppServerEnd) -> None:
        attachments, entry.attachments = entry.attachments, []
        for attachment in attachments:
            try:
                attachment.app_server_ended(end)
            except Exception:
                _log.failure("attachment failed to close", workspace_id=entry.workspace_id)

    async def _retire(self, entry: _Entry, end: AppServerEnd) -> None:
        """
        §5.5 steps 1 (if not done), 3, 4 and 5 once the process has exited.
        """
        self._tell_attachments(entry, end)
        plan = entry.plan
        if plan is not None:
            self._loopback_tokens.revoke(plan.loopback_token)
            exp = self._minter.last_exp(plan.turn_id) or plan.cap.exp
            self._minter.forget(plan.turn_id)
            revoke = self._exec_gateway.revoke_turn(plan.turn_id, exp)
            self._revokes.add(revoke)
            revoke.addBoth(lambda _: self._revokes.discard(revoke))
        try:
            entry.upload = self._upload_slots.run(self._upload, entry.workspace_id)
            await entry.upload
        except CancelledError:
            pass  # abandoned by ShutdownAll's budget, which logged it; the home stays pending
        finally:
            entry.upload = None
            if self._entries.get(entry.workspace_id) is entry:
                del self._entries[entry.workspace_id]

    async def _upload_home(self, workspace_id: str) -> bool:
        home = self._homes.path_for(workspace_id)
        try:
            await snapshot_home(
                self._store, self._homes, workspace_id, self._reactor, self._max_snapshot_bytes
            )
        except CancelledError:
            self._records.set_upload_pending(workspace_id)
            raise
        except Exception as e:
            self._metrics.home_transfers.labels(op="upload", result="error").inc()
            self._records.set_upload_pending(workspace_id)
            _log.error(
                "CODEX_HOME upload failed; kept for retry", workspace_id=workspace_id, error=str(e)
            )
            return False
        self._metrics.home_transfers.labels(op="upload", result="ok").inc()
        self._remove_quietly(home)
        self._records.remove(workspace_id)
        _log.info("CODEX_HOME uploaded: workspace {workspace_id}", workspace_id=workspace_id)
        return True

    def _upload(self, workspace_id: str) -> Deferred[None]:
        return Deferred.fromCoroutine(self._upload_home(workspace_id)).addCallback(lambda _: None)

    # --- recovery -----------------------------------------------------------------------------------

    def recover(self, workspace_ids: list[str]) -> Deferred[None]:
        """
        §5.8 step 5: upload the leftover homes of C{workspace_ids} in the background, each under
        its workspace's lock (so an C{ensure} for it waits). The returned Deferred fires when all
        are done and never fails.
        """

        async def recover_one(workspace_id: str) -> None:
            try:
                await self.locked(workspace_id, lambda: self._upload_home(workspace_id))
            except Exception:
                _log.failure("startup recovery upload failed", workspace_id=workspace_id)

        async def recover_all() -> None:
            for d in [Deferred.fromCoroutine(recover_one(ws)) for ws in workspace_ids]:
                await d

        return Deferred.fromCoroutine(recover_all())

    # --- idle reaper --------------------------------------------------------------------------------

    def start(self) -> None:
        """
        Start the idle reaper (§5.11) unless C{CXG_IDLE_SHUTDOWN} is 0.
        """
        if self._idle_shutdown <= 0 or self._reaper is not None:
            return
        tick = max(MIN_REAP_TICK, min(MAX_REAP_TICK, self._idle_shutdown / 4))
        self._reaper = LoopingCall(self.reap_idle)
        self._reaper.clock = self._clock
        self._reaper.start(tick, now=False).addErrback(lambda f: _log.failure("idle reaper stopped", f))

    def reap_idle(self) -> None:
        """
        Stop every running, unpinned entry idle for at least C{CXG_IDLE_SHUTDOWN}.
        """
        now = self._clock.seconds()
        for workspace_id, entry in list(self._entries.items()):
            if entry.state != "running" or self._pins.get(workspace_id):
                continue
            if now - entry.last_activity < self._idle_shutdown:
                continue
            _log.info("idle reap: workspace {workspace_id}", workspace_id=workspace_id)
            self.stop(workspace_id, "idle").addErrback(
                _log_failure, "idle reap: subprocess shutdown failed", workspace_id
            )

    # --- shutdown -----------------------------------------------------------------------------------

    def shutdown_all(self, budget: float = SHUTDOWN_BUDGET) -> Deferred[None]:
        """
        §5.9 step 3–4: stop every workspace concurrently; after C{budget} seconds SIGKILL what is
        left and abandon unfinished uploads (their homes stay C{upload-pending}). Never fails.
        """
        self._stopping = True
        if self._reaper is not None and self._reaper.running:
            self._reaper.stop()
        self._reaper = None

        async def stop_everything() -> None:
            stops = [
                self.stop(ws, "shutdown").addErrback(_log_failure, "ShutdownAll: stop failed", ws)
                for ws in list(self._entries)
            ]
            for d in stops:
                await d
            for revoke in list(self._revokes):
                await revoke

        everything = Deferred.fromCoroutine(stop_everything())
        done: Deferred[None] = Deferred()

        def budget_over() -> None:
            if done.called:
                return
            for workspace_id, entry in list(self._entries.items()):
                if entry.process is not None:
                    entry.process.signal_group(signal.SIGKILL)
                if entry.upload is not None:
                    entry.upload.cancel()
                self._records.set_upload_pending(workspace_id)
                _log.error(
                    "ShutdownAll: CODEX_HOME not saved; kept for next start",
                    workspace_id=workspace_id,
                )
            if not done.called:
                done.callback(None)

        timer = self._clock.callLater(budget, budget_over)

        def finished(_: object) -> None:
            if timer.active():
                timer.cancel()
            if not done.called:
                done.callback(None)

        everything.addBoth(finished)
        return done
