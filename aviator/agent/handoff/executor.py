"""Running hand-offs: ending idle connections of pods, paced, one step at a time.

`HandOffExecutor.begin(target, policy, period_s)` starts (or keeps) a hand-off of one
pod; `step()` does one round of work for every active hand-off and is called every
fraction of a second while any is active (blocking calls: run it in a thread). One
step, per pod:

1. the program's socket map (`SocketTable.sockets`, one walk for all pods) gives the
   pod's connections a hand-off may end (`select.candidates`); none left → done;
2. `pacing.due` says how many to end now (a ramp over the period), the pod's token
   bucket caps it;
3. the pod's network namespace (the inode the program recorded) is dumped once through
   sock_diag, which names each connection with its cookie;
4. idle candidates first: right before its destroy the socket's state is read again
   from the map (no request open: `select.is_idle`) and from the kernel (no request
   bytes waiting to be read); busy candidates are then watched for up to `watch_s`, polled every
   `watch_poll_s`, and each is ended right after its answer went out: on a busy pool
   connection the idle moment between an answer and the next request is short.

A tiny window remains between that last read and the kernel ending the connection: a
request the client sends in it meets a reset connection. Clients retry an idempotent
request once on a reused connection that was closed (as they do when a server closes
an idle keep-alive connection), so it fails nowhere; non-idempotent requests on pooled
connections already carry that risk with every server's idle timeout.

A hand-off ends when the pod has no connection left to end, when it is cancelled (the
pod is routed again, or is gone), or `grace_s` after its period (connections busy the
whole time are left alone). Counters are cumulative per pod (`ended`), for reports.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Protocol

from aviator.agent.bpf.model import SocketState
from aviator.agent.handoff import pacing
from aviator.agent.handoff.select import Target, candidates, is_idle
from aviator.agent.handoff.sockdiag import DiagSocket
from aviator.kube.addresses import normalize_ip

log = logging.getLogger(__name__)

Tuple = tuple[tuple[str, int], tuple[str, int]]
_ENDED, _BUSY, _GONE = "ended", "busy", "gone"


class SocketTable(Protocol):
    """The program's connections (aviator.agent.bpf.source.BpfLatencySource)."""

    def sockets(self) -> list[SocketState]: ...

    def socket(self, sk: int) -> SocketState | None: ...


class Diag(Protocol):
    """sock_diag in one network namespace (aviator.agent.handoff.netlink.SockDiag)."""

    def established(self) -> list[DiagSocket]: ...

    def query(self, sock: DiagSocket) -> DiagSocket | None: ...

    def destroy(self, sock: DiagSocket) -> int: ...

    def close(self) -> None: ...


# Opens sock_diag in the namespace with this inode; None when no process is in it.
DiagOpener = Callable[[int], Diag | None]


@dataclass
class HandOff:
    """One pod's hand-off in progress (or just finished: `outcome` is set)."""

    target: Target
    policy: str
    started: float
    period_s: float
    limit: pacing.RateLimit
    ended: int = 0
    remaining: int = 0
    busy: int = 0  # destroys skipped: a request was in flight at the last look
    failed: int = 0
    outcome: str = ""  # "", "complete", "expired", "cancelled"
    finished: float | None = None

    @property
    def active(self) -> bool:
        return not self.outcome


@dataclass
class HandOffExecutor:
    table: SocketTable
    open_diag: DiagOpener
    node_addresses: Collection[str] = ()
    rate: float = 50.0  # connections per second per pod
    burst: float = 10.0
    fresh_s: float = 1.0
    grace_s: float = 30.0
    keep_finished_s: float = 60.0
    watch_s: float = 0.2  # per step: how long busy candidates are watched for their answer
    watch_poll_s: float = 0.001
    sleep: Callable[[float], None] = time.sleep
    # Network namespaces (inodes) whose connections may be ended; None: any. The BPF
    # program sees every namespace of the kernel, where another namespace may use the
    # same pod IP (another cluster's nodes on one kernel, nested containers).
    netns_allowed: Callable[[int], bool] | None = None
    clock: Callable[[], float] = time.monotonic
    kernel_clock: Callable[[], int] = time.monotonic_ns  # bpf_ktime_get_ns's clock
    handoffs: dict[str, HandOff] = field(default_factory=dict)
    ended_total: dict[str, int] = field(default_factory=dict)  # per pod, cumulative
    _warned: set[tuple[int, int | None]] = field(default_factory=set)  # (netns, errno) logged

    def __post_init__(self) -> None:
        self.node_addresses = frozenset(normalize_ip(a) or a for a in self.node_addresses)

    def begin(self, target: Target, policy: str, period_s: float) -> HandOff:
        """Start handing `target` off (an active hand-off of the pod is kept as it is)."""
        current = self.handoffs.get(target.pod)
        if current is not None and current.active:
            return current
        h = HandOff(
            target=target,
            policy=policy,
            started=self.clock(),
            period_s=period_s,
            limit=pacing.RateLimit(self.rate, self.burst),
        )
        self.handoffs[target.pod] = h
        log.info("handing off %s (%s) over %.1fs for %s", target.pod, target.ip, period_s, policy)
        return h

    def cancel(self, pod: str) -> None:
        h = self.handoffs.get(pod)
        if h is not None and h.active:
            self._finish(h, "cancelled")

    def active(self) -> list[HandOff]:
        return [h for h in self.handoffs.values() if h.active]

    def _finish(self, h: HandOff, outcome: str) -> None:
        h.outcome = outcome
        h.finished = self.clock()
        log.info("hand-off of %s %s: %d connections ended", h.target.pod, outcome, h.ended)

    def step(self) -> None:
        """One round of every active hand-off (see the module docstring)."""
        now = self.clock()
        for pod, h in list(self.handoffs.items()):
            if not h.active and h.finished is not None and now - h.finished > self.keep_finished_s:
                del self.handoffs[pod]
        active = self.active()
        if not active:
            return
        sockets = self.table.sockets()
        diags: dict[int, tuple[Diag, dict[Tuple, DiagSocket]] | None] = {}
        try:
            for h in active:
                self._step_one(h, sockets, diags, now)
        finally:
            for entry in diags.values():
                if entry is not None:
                    entry[0].close()

    def _step_one(
        self,
        h: HandOff,
        sockets: list[SocketState],
        diags: dict[int, tuple[Diag, dict[Tuple, DiagSocket]] | None],
        now: float,
    ) -> None:
        if self.netns_allowed is not None:
            sockets = [s for s in sockets if self.netns_allowed(s.netns)]
        found = candidates(
            sockets,
            h.target,
            node_addresses=self.node_addresses,
            now_ns=self.kernel_clock(),
            fresh_s=self.fresh_s,
        )
        h.remaining = len(found)
        if not found:
            self._finish(h, "complete")
            return
        if now - h.started > h.period_s + self.grace_s:
            self._finish(h, "expired")
            return
        want = pacing.due(
            ended=h.ended, remaining=len(found), started=h.started, period_s=h.period_s, now=now
        )
        done = 0
        busy: list[SocketState] = []
        for cand in found:
            if done >= want or h.limit.available(now) < 1:
                break
            result = self._try_end(h, cand, diags)
            if result == _ENDED:
                done += 1
                h.limit.take(1, now)
            elif result == _BUSY:
                busy.append(cand)
        # A busy connection is idle only between an answer and the client's next request:
        # watch those closely for a moment and end each right after its answer went out.
        polls = int(self.watch_s / self.watch_poll_s) if self.watch_poll_s > 0 else 0
        while busy and done < want and polls > 0:
            polls -= 1
            if h.limit.available(self.clock()) < 1:
                break
            still: list[SocketState] = []
            for cand in busy:
                if done >= want:
                    break
                result = self._try_end(h, cand, diags, count_busy=False)
                if result == _ENDED:
                    done += 1
                    h.limit.take(1, self.clock())
                elif result == _BUSY:
                    still.append(cand)
            busy = still
            if busy:
                self.sleep(self.watch_poll_s)
        h.ended += done
        h.remaining -= done
        if done:
            self.ended_total[h.target.pod] = self.ended_total.get(h.target.pod, 0) + done

    def _try_end(
        self,
        h: HandOff,
        cand: SocketState,
        diags: dict[int, tuple[Diag, dict[Tuple, DiagSocket]] | None],
        *,
        count_busy: bool = True,
    ) -> str:
        """End `cand` if it is idle right now: no request open in the program's view and
        no request bytes waiting to be read. (Response bytes not yet acknowledged do not
        count: a request/response client acknowledges an answer with its next request.)"""
        entry = self._diag(cand.netns, diags)
        if entry is None:
            return _GONE
        diag, by_tuple = entry
        target = by_tuple.get((cand.local, cand.remote))
        if target is None:
            return _GONE  # closed since the walk (or not established)
        current = self.table.socket(cand.sk)
        if current is None:
            return _GONE
        if not is_idle(current):
            h.busy += count_busy
            return _BUSY
        queues = diag.query(target)
        if queues is None:
            return _GONE
        if queues.rqueue:
            h.busy += count_busy
            return _BUSY
        err = diag.destroy(target)
        if err == 0:
            return _ENDED
        if err not in (errno.ENOENT, errno.ESTALE):
            h.failed += 1
            log.warning(
                "ending %s→%s failed: %s", cand.remote, cand.local, errno.errorcode.get(err, err)
            )
        return _GONE

    def _diag(
        self, netns: int, diags: dict[int, tuple[Diag, dict[Tuple, DiagSocket]] | None]
    ) -> tuple[Diag, dict[Tuple, DiagSocket]] | None:
        if netns not in diags:
            entry: tuple[Diag, dict[Tuple, DiagSocket]] | None = None
            try:
                diag = self.open_diag(netns)
                if diag is not None:
                    try:
                        entry = (diag, {_normal(s): s for s in diag.established()})
                    except BaseException:
                        diag.close()
                        raise
            except OSError as exc:
                # Once per namespace and cause: without CAP_SYS_ADMIN this repeats every step.
                if (netns, exc.errno) not in self._warned:
                    self._warned.add((netns, exc.errno))
                    log.warning("sock_diag in network namespace %d: %s", netns, exc)
            diags[netns] = entry
        return diags[netns]


def _normal(s: DiagSocket) -> Tuple:
    return (
        (normalize_ip(s.local[0]) or s.local[0], s.local[1]),
        (normalize_ip(s.remote[0]) or s.remote[0], s.remote[1]),
    )
