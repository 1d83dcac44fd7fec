"""Running hand-offs: ending idle connections of pods, paced, one step at a time.

`HandOffExecutor.begin(target, policy, period_s)` starts (or keeps) a hand-off of one
pod; `step()` does one round of work for every active hand-off and is called every
fraction of a second while any is active (blocking calls: run it in a thread). One
step, per pod:

1. the program's socket map (`SocketTable.sockets`, one walk for all pods) gives the
   pod's connections a hand-off may end (`select.connections`); none left, and none
   just dialled to the pod either (a Service proxy may follow the routing change
   late) → done;
2. `pacing.due` says how many to end now (a ramp over the period), the pod's token
   bucket caps it;
3. the pod's network namespace (the inode the program recorded) is dumped once through
   sock_diag, which names each connection with its cookie;
4. idle candidates first: right before its destroy the socket's state is read again
   from the map (no request open, and none for `quiet_s`: `select.is_quiet`); then,
   where the kernel can (`Diag.destroy_if_quiet`: bpf/handoff.h), the same look and
   the reset are one step under the socket's lock; elsewhere it asks the kernel (no
   request bytes waiting to be read), reads the map once more, last (it sees an
   HTTP/1.1 request's first segment as it arrives, so only one arriving between that
   read and the destroy is cut) and destroys; busy candidates are then watched
   for up to `watch_s`, polled every `watch_poll_s`, and each is ended once it has been
   quiet that long: on a busy pool connection the pauses between requests are short,
   and a connection whose client sends each request the moment the previous answer
   arrives never pauses at all (it is left on its pod: ending it would lose the request
   on its way);
5. an HTTP/2 or gRPC connection still busy `drain_after_s` after it was first due (no
   idle moment in any watch since: calls overlap on it without a pause) is *drained*:
   `drain` writes a graceful GOAWAY for the pod's server (goaway.py, drain.py), the
   client finishes its open streams on it, opens no new one and closes it. A drained
   connection counts as handed off (`drained`); it is written to once, and ended with
   a destroy if it is found idle later (a client that keeps it open).

A tiny window remains between that last read and the kernel ending the connection: a
request the client sends in it meets a reset connection. On a connection quiet for
`quiet_s` that takes a client sending at that very instant (about the window over its
pause, 0.1 ms against tens of milliseconds or more); clients retry an idempotent
request once on a reused connection that was closed (as they do when a server closes
an idle keep-alive connection), and non-idempotent requests on pooled connections
already carry that risk with every server's idle timeout.

A hand-off ends when the pod has no connection left to end, when it is cancelled (the
pod is routed again, or is gone), or `grace_s` after its period (connections busy the
whole time are left alone). Counters are cumulative per pod (`ended`, `drained`), for
reports.

An order stays listed a while after its period (the controller's LINGER_S), and
`begin` starts a finished hand-off of the same pod and policy again: a connection
dialled to the pod since (a Service proxy that followed late) is still ended. Such a
repeat logs at INFO only if it ends or drains something; one that finds nothing logs
at DEBUG, or an agent would say "0 connections ended" at every look while the order
lingers.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Protocol

from aviator.agent.bpf.model import SocketState
from aviator.agent.handoff import goaway, pacing
from aviator.agent.handoff.drain import SENT as drain_sent
from aviator.agent.handoff.select import (
    DEFAULT_QUIET_S,
    Target,
    connections,
    is_idle,
    is_quiet,
)
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

    def destroy_if_quiet(self, sock: DiagSocket, quiet_ns: int) -> int | None: ...

    def close(self) -> None: ...


# Opens sock_diag in the namespace with this inode; None when no process is in it.
DiagOpener = Callable[[int], Diag | None]
# Writes the graceful GOAWAY on a connection (drain.send_goaway): "sent", or why not.
Drainer = Callable[[SocketState, DiagSocket], str]


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
    busy: int = 0  # destroys put off: a request in flight, or not quiet yet, at a look
    failed: int = 0
    drained: int = 0  # busy HTTP/2 connections sent a graceful GOAWAY
    outcome: str = ""  # "", "complete", "expired", "cancelled"
    finished: float | None = None
    repeat: bool = False  # the same order begun again after it finished (module docstring)
    # Connections (sk, peer): first found due and busy; sent a GOAWAY; never to be.
    busy_since: dict[tuple[int, tuple[str, int]], float] = field(default_factory=dict)
    drained_sks: set[tuple[int, tuple[str, int]]] = field(default_factory=set)
    refused: set[tuple[int, tuple[str, int]]] = field(default_factory=set)

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
    quiet_s: float = DEFAULT_QUIET_S  # idle this long before a destroy (select.is_quiet)
    grace_s: float = 30.0
    keep_finished_s: float = 60.0
    watch_s: float = 0.2  # per step: how long busy candidates are watched for their answer
    watch_poll_s: float = 0.001
    # Busy HTTP/2 connections: after this long due and never idle, a graceful GOAWAY.
    drain: Drainer | None = None
    drain_after_s: float = 1.0
    sleep: Callable[[float], None] = time.sleep
    # Network namespaces (inodes) whose connections may be ended; None: any. The BPF
    # program sees every namespace of the kernel, where another namespace may use the
    # same pod IP (another cluster's nodes on one kernel, nested containers).
    netns_allowed: Callable[[int], bool] | None = None
    clock: Callable[[], float] = time.monotonic
    kernel_clock: Callable[[], int] = time.monotonic_ns  # bpf_ktime_get_ns's clock
    handoffs: dict[str, HandOff] = field(default_factory=dict)
    ended_total: dict[str, int] = field(default_factory=dict)  # per pod, cumulative
    drained_total: dict[str, int] = field(default_factory=dict)  # per pod, cumulative
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
            repeat=current is not None and (current.target, current.policy) == (target, policy),
        )
        self.handoffs[target.pod] = h
        log.log(
            logging.DEBUG if h.repeat else logging.INFO,
            "handing off %s (%s) over %.1fs for %s%s",
            target.pod,
            target.ip,
            period_s,
            policy,
            " again" if h.repeat else "",
        )
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
        quiet = h.repeat and not (h.ended or h.drained)
        log.log(
            logging.DEBUG if quiet else logging.INFO,
            "hand-off of %s %s: %d connections ended",
            h.target.pod,
            outcome,
            h.ended,
        )

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
        # Connections just dialled to the pod (a Service proxy still following the
        # routing change) are not ended yet, but the hand-off is not over while they are.
        found, young = connections(
            sockets,
            h.target,
            node_addresses=self.node_addresses,
            now_ns=self.kernel_clock(),
            fresh_s=self.fresh_s,
        )
        h.remaining = len(found) + young
        if not h.remaining:
            self._finish(h, "complete")
            return
        if now - h.started > h.period_s + self.grace_s:
            self._finish(h, "expired")
            return
        if not found:
            return
        # Drained connections close once their streams are done; one found idle before
        # that (its client keeps it open) is ended like any idle one, counted already.
        pending: list[SocketState] = []
        for cand in found:
            if _key(cand) not in h.drained_sks:
                pending.append(cand)
            elif is_idle(cand):
                self._try_end(h, cand, diags, count_busy=False)
        h.remaining = len(pending) + young
        want = pacing.due(
            ended=h.ended + h.drained,
            remaining=len(pending),
            started=h.started,
            period_s=h.period_s,
            now=now,
        )
        done = 0
        busy: list[SocketState] = []
        for cand in pending:
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
        drained = self._drain_busy(h, busy, diags, now, want - done)
        h.ended += done
        h.drained += drained
        h.remaining -= done + drained
        if done:
            self.ended_total[h.target.pod] = self.ended_total.get(h.target.pod, 0) + done
        if drained:
            self.drained_total[h.target.pod] = self.drained_total.get(h.target.pod, 0) + drained

    def _drain_busy(
        self,
        h: HandOff,
        busy: list[SocketState],
        diags: dict[int, tuple[Diag, dict[Tuple, DiagSocket]] | None],
        now: float,
        want: int,
    ) -> int:
        """Graceful GOAWAYs for the HTTP/2 connections of `busy` (due, and busy through
        this step's watch) that have been busy `drain_after_s` since first due; how many
        were sent (at most `want`, within the pod's rate limit)."""
        if self.drain is None:
            return 0
        sent = 0
        for cand in busy:
            if sent >= want or h.limit.available(self.clock()) < 1:
                break
            key = _key(cand)
            if cand.protocol not in ("h2", "grpc") or key in h.refused:
                continue
            if now - h.busy_since.setdefault(key, now) < self.drain_after_s:
                continue
            if self._try_drain(h, cand, diags) == drain_sent:
                sent += 1
                h.limit.take(1, self.clock())
        return sent

    def _try_drain(
        self,
        h: HandOff,
        cand: SocketState,
        diags: dict[int, tuple[Diag, dict[Tuple, DiagSocket]] | None],
    ) -> str:
        """Ask the pod's server side of `cand` to go away gracefully, if it is still busy
        (an idle one is ended by the next step instead)."""
        assert self.drain is not None
        entry = self._diag(cand.netns, diags)
        current = self.table.socket(cand.sk)
        target = None if entry is None else entry[1].get((cand.local, cand.remote))
        if target is None or current is None:
            return _GONE
        if is_idle(current):
            return _BUSY  # not busy any more: destroyed when next due
        try:
            result = self.drain(current, target)
        except OSError as exc:
            if (cand.netns, exc.errno) not in self._warned:
                self._warned.add((cand.netns, exc.errno))
                log.warning("GOAWAY on %s→%s: %s", cand.remote, cand.local, exc)
            return _GONE
        key = _key(cand)
        if result == drain_sent:
            h.drained_sks.add(key)
            log.info(
                "sent GOAWAY on %s→%s of %s (busy %.1fs)",
                cand.remote,
                cand.local,
                h.target.pod,
                self.clock() - h.busy_since.get(key, self.clock()),
            )
        elif result not in goaway.TRANSIENT:
            h.refused.add(key)
            log.info("not draining %s→%s of %s: %s", cand.remote, cand.local, h.target.pod, result)
        return result

    def _try_end(
        self,
        h: HandOff,
        cand: SocketState,
        diags: dict[int, tuple[Diag, dict[Tuple, DiagSocket]] | None],
        *,
        count_busy: bool = True,
    ) -> str:
        """End `cand` if it is quiet right now: no request open in the program's view, for
        `quiet_s` at least, and no request bytes waiting to be read. (Response bytes not
        yet acknowledged do not count: a request/response client acknowledges an answer
        with its next request.)"""
        entry = self._diag(cand.netns, diags)
        if entry is None:
            return _GONE
        diag, by_tuple = entry
        target = by_tuple.get((cand.local, cand.remote))
        if target is None:
            return _GONE  # closed since the walk (or not established)
        err = self._end(diag, target, cand.sk, int(self.quiet_s * 1e9))
        if err == errno.EBUSY:
            h.busy += count_busy
            return _BUSY
        if err == 0:
            return _ENDED
        if err not in (errno.ENOENT, errno.ESTALE):
            h.failed += 1
            log.warning(
                "ending %s→%s failed: %s", cand.remote, cand.local, errno.errorcode.get(err, err)
            )
        return _GONE

    def _end(self, diag: Diag, target: DiagSocket, sk: int, quiet_ns: int) -> int:
        """End the connection if it is quiet: 0; EBUSY (a request or stream open, none
        for `quiet_ns`, or request bytes unread); ENOENT or ESTALE (gone); or the errno
        the kernel refused with."""
        not_quiet = self._not_quiet(sk, quiet_ns)  # cheap: most busy ones stop here
        if not_quiet is not None:
            return not_quiet
        # In the kernel, the look and the end are one step under the socket's lock.
        err = diag.destroy_if_quiet(target, quiet_ns)
        if err is not None:
            return err
        # Where it cannot: a look, then the end.
        queues = diag.query(target)
        if queues is None:
            return errno.ENOENT
        if queues.rqueue:
            return errno.EBUSY
        # The program's view once more, right before the destroy: it sees an HTTP/1.1
        # request's first segment as it arrives, so a request on its way is cut only if
        # it arrives between this read and the destroy (not during the query).
        not_quiet = self._not_quiet(sk, quiet_ns)
        if not_quiet is not None:
            return not_quiet
        return diag.destroy(target)

    def _not_quiet(self, sk: int, quiet_ns: int) -> int | None:
        """None when the program sees the connection quiet now; else ENOENT (closed) or
        EBUSY."""
        current = self.table.socket(sk)
        if current is None:
            return errno.ENOENT
        return None if is_quiet(current, self.kernel_clock(), quiet_ns) else errno.EBUSY

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


def _key(s: SocketState) -> tuple[int, tuple[str, int]]:
    # The socket's address may be reused by a later connection: the peer tells them apart.
    return (s.sk, s.remote)


def _normal(s: DiagSocket) -> Tuple:
    return (
        (normalize_ip(s.local[0]) or s.local[0], s.local[1]),
        (normalize_ip(s.remote[0]) or s.remote[0], s.remote[1]),
    )
