"""Hand-off in the cluster: a keep-alive pool's connections leave a pod that turns slow.

The quick-start apps (2 fast, 2 slow: 500 ms) behind my-app-service, a takeover policy
(topN 2, a 1 s p99Threshold) with hand-off on. A keep-alive pool client (as urllib3/Go
pool: reuse, re-dial, one retry on a reused connection closed before any response byte)
holds connections to both fast pods. One fast pod turns slow (2 s): the policy routes
around it and keeps it out (its breaker's recovery wait), and its node's agent ends its
idle pooled connections; the pool re-dials through the proxy.
A connection busy at every look (a pool that hands it the next request before it was
ever quiet) stays on its pod, and the agent's Event says how many did. No request
fails for the hand-off; one that timed out in line for a connection (all busy) is
counted apart, and a failure prints the traffic second by second with every change of
the routed set and the pods' status then.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from datetime import datetime
from typing import Any

import aiohttp
import pytest
from e2e_scenario import TARGET, Scenario, wait_for

from aviator.kube import ApiError
from aviator.kube.resources import EVENTS
from aviator.testing.pool import KeepAlivePool

pytestmark = pytest.mark.e2e

CONVERGE_S = 60.0  # a bound on waiting, not a figure: a busy machine is slow
PERIOD_S = 2.0
SLOW_S = 2.0  # the victim's latency: a request in flight then may take this long
THRESHOLD_S = 1.0  # the breaker's p99Threshold: between the slow pods' 0.5 s and SLOW_S


async def test_pooled_connections_leave_a_pod_that_turns_slow(quickstart: Scenario) -> None:
    quickstart.apply(
        quickstart.policy(
            selection={"mode": "topN", "topN": 2},
            routing={"mode": "takeover", "handoff": {"enabled": True, "period": f"{PERIOD_S:g}s"}},
            dampening={"enabled": False},
            # Above the slow pods' 500 ms, so that only the victim breaks it. At the
            # sample's 500 ms, a busy machine's late answers have the slow pods ejected
            # for stalls too, and a stalled pod takes the place of one held out with no
            # request open now (the breaker's module docstring): the victim could be
            # routed again between its slow answers, which cancels its hand-off.
            circuitBreaker={"p99Threshold": f"{THRESHOLD_S:g}s"},
        )
    )
    await quickstart.converge_to_fast(TARGET, timeout_s=CONVERGE_S)
    address = quickstart.cluster.address(quickstart.ns, TARGET)
    assert address is not None
    # Generous: a request queued behind the slow victim (2 s) must not time out.
    pool = KeepAlivePool(lambda: address, size=16, timeout_s=10.0)
    done = asyncio.Event()  # traffic runs until the checks are over (bounded: 180 s)
    # What happened when, for a failure's account: the test's steps and every change of
    # the routed set while the traffic runs.
    marks: list[tuple[float, str]] = [(time.monotonic(), "started")]
    routed: list[tuple[float, set[str]]] = []  # every routed set the watch saw, and when
    traffic = asyncio.get_running_loop().create_task(pool.run(40, 180.0, stop=done))
    watch = asyncio.get_running_loop().create_task(_watch_routed(quickstart, marks, routed, done))
    try:
        fast = await quickstart.pods("fast")

        async def served() -> set[str | None]:
            return {s.served_by for s in pool.samples}

        # The victim is a fast pod the pool holds a connection to: requests that seldom
        # overlap keep the pool at one or two connections, which may all be on one pod.
        await wait_for(
            "the pool to hold a connection to a fast pod",
            served,
            lambda pods: bool(pods & fast),
            timeout_s=15,
        )
        victim = next(s.served_by for s in reversed(pool.samples) if s.served_by in fast)
        assert victim is not None
        (healthy,) = fast - {victim}
        # Hand-offs of the victim may have run before: converging, an early evaluation
        # may have left it out for a moment (and its agent, learning late that it was
        # routed again, ended an idle connection then). Only those after this count.
        slowed = time.time()
        marks.append((time.monotonic(), f"{victim} slowed"))
        quickstart.cluster.set_pod_latency(quickstart.ns, victim, f"{SLOW_S:g}s")
        _, left_after = await wait_for(
            f"{victim} to leave {TARGET}",
            lambda: quickstart.routed(TARGET),
            lambda pods: victim not in pods and healthy in pods,
            timeout_s=CONVERGE_S,
        )
        out_at = time.monotonic()
        marks.append((out_at, f"{victim} seen out"))
        await wait_for(
            f"the status to list the hand-off of {victim}",
            quickstart.avp,
            lambda p: (
                p is not None
                and victim in [h["pod"] for h in (p.get("status") or {}).get("handOffs") or []]
            ),
            timeout_s=10,
        )

        async def handed_off() -> list[str]:
            answer = await quickstart.kube.list(EVENTS, quickstart.ns)
            return [
                str(e.get("note"))
                for e in answer.get("items", [])
                if e.get("reason") == "ConnectionsHandedOff"
                and victim in str(e.get("note"))
                and _seconds(str(e.get("eventTime"))) >= slowed
            ]

        # The agent records the Event when the hand-off is over: every idle connection
        # ended within the period (the executor's pacing, unit-tested) and any that was
        # busy left alone. Waiting for it, not for a clock, keeps the check true on a
        # busy machine, where the agent may learn of the order late.
        notes, _ = await wait_for(
            "a ConnectionsHandedOff Event", handed_off, lambda n: bool(n), timeout_s=60
        )
        heard = time.monotonic()
        marks.append((heard, "hand-off Event seen"))
        # A request due from here on is answered by the victim only on a connection the
        # agent left alone (busy at every look, never quiet: docs/agent.md), and never on
        # one dialled after the hand-off: the proxy no longer sends new ones there. One
        # busy at the last look may still be answering: the victim's latency on top.
        settled = heard + SLOW_S + 1.0
        left_alone = sum(_left_alone(n) for n in notes)

        async def answered_since_settled() -> list[float]:
            return sorted(s.at for s in pool.samples if s.at >= settled)

        answered, _ = await wait_for(
            "40 requests answered after the hand-off settled",
            answered_since_settled,
            lambda due: len(due) >= 40,
            timeout_s=60,
        )
        # Every request of the window, the victim's slow answers included, not only the
        # first 40 answers (which the fast pods give first).
        window = (settled, answered[39])

        async def unanswered() -> int:
            issued = sum(1 for d in pool.issued if window[0] <= d <= window[1])
            return issued - sum(1 for s in pool.samples if window[0] <= s.at <= window[1])

        await wait_for(
            "every request of the window answered", unanswered, lambda n: n == 0, timeout_s=30
        )
        after = [s for s in pool.samples if window[0] <= s.at <= window[1]]
        # What follows holds for a pod that stays out: one routed again takes new
        # connections (and its hand-off is cancelled). Said first, as the cause it is.
        back = [at - marks[0][0] for at, pods in routed if at > out_at and victim in pods]
        assert not back, (
            f"{victim} routed again at {back[0]:.2f}s, after it left\n{_timeline(pool, marks)}"
        )
        on_victim = {s.connection for s in after if s.served_by == victim}
        dialled_after = sorted(c for c in on_victim if pool.dialed[c] >= heard)
        assert not dialled_after, (
            f"connection(s) {dialled_after} dialled after the hand-off reached {victim}\n"
            + _timeline(pool, marks)
        )
        assert len(on_victim) <= left_alone, (
            f"{sum(1 for s in after if s.served_by == victim)} of {len(after)} requests "
            f"served by {victim} on {len(on_victim)} connection(s) after its hand-off "
            f"ended, {left_alone} left alone ({notes})\n" + _timeline(pool, marks)
        )
        # The agent's own account: it ended the pod's idle connections and did not run
        # into its expiry ("complete": none left; "cancelled": the controller dropped the
        # order LINGER_S after its period).
        ran = any(" after " in n and "(expired" not in n for n in notes)
        assert ran, f"{notes}\n{_timeline(pool, marks)}"
    finally:
        done.set()
        await traffic
        await watch
        await pool.close()
    # No request failed for the hand-off: none cut, none refused, none lost on its
    # connection. One that timed out waiting in line for a connection did not reach any:
    # every connection the pool may hold was busy for its whole wait (a busy machine can
    # make the healthy pod look slow for an evaluation; without dampening that hands it
    # off, and the pool's re-dials go to the 500 ms pods, where they stay busy).
    in_line = [s for s in pool.samples if not s.ok and s.queued and s.connection == 0]
    failed = [s for s in pool.samples if not s.ok and s not in in_line]
    assert not failed, (
        f"{len(failed)} failed: {sorted({s.error or '?' for s in failed})}\n"
        + _timeline(pool, marks)
    )
    print(
        f"hand-off: {victim} left after {left_after:.1f}s; {pool.retries} requests retried, "
        f"{pool.opened} connections opened; after it: {len(on_victim)} connection(s) and "
        f"{sum(1 for s in after if s.served_by == victim)} of {len(after)} requests on "
        f"{victim}; {notes}; {len(in_line)} timed out in line for a connection"
    )
    if in_line:
        print(_timeline(pool, marks))


async def _watch_routed(
    scenario: Scenario,
    marks: list[tuple[float, str]],
    routed: list[tuple[float, set[str]]],
    done: asyncio.Event,
) -> None:
    """Every change of the routed set seen until `done`, in `routed` and, with the
    pods' status then, in `marks` (a look that failed is marked too)."""
    seen: set[str] | None = None
    while not done.is_set():
        try:
            now = await scenario.routed(TARGET)
            if now != seen:
                routed.append((time.monotonic(), now))
                marks.append((routed[-1][0], "routed: " + ", ".join(sorted(now))))
                policy = await scenario.avp()
                for pod in ((policy or {}).get("status") or {}).get("pods") or []:
                    marks.append((time.monotonic(), f"  {_pod_line(pod)}"))
                seen = now
        except (ApiError, aiohttp.ClientError, TimeoutError) as err:
            marks.append((time.monotonic(), f"routed: not read ({err!r})"))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), 0.25)


def _pod_line(pod: dict[str, Any]) -> str:
    """A pod of the policy's status, in a line: what a flapping routed set is read by."""
    keys = ("p50Ms", "p99Ms", "samples", "keepWarmSamples", "oldestOpenMs", "rif")
    measured = " ".join(f"{k}={pod[k]}" for k in keys if pod.get(k) is not None)
    reason = f" ({pod['reason']})" if pod.get("reason") else ""
    return f"{pod.get('name')}: {pod.get('state')}{reason} {measured}"


def _timeline(pool: KeepAlivePool, marks: list[tuple[float, str]]) -> str:
    """Per second of the traffic: requests answered by each pod, failed ones by error,
    and how many connections answered; the marks placed among them; which pod each
    connection reached."""
    start = marks[0][0]
    rows: dict[int, dict[str, int]] = {}
    conns: dict[int, set[int]] = {}
    for s in pool.samples:
        second = int(s.at - start)
        row = rows.setdefault(second, {})
        key = (s.served_by or "?") if s.ok else f"failed({s.error}, connection {s.connection})"
        row[key] = row.get(key, 0) + 1
        conns.setdefault(second, set()).add(s.connection)
    lines = [(at - start, f"{at - start:7.2f}s  {label}") for at, label in marks]
    for second, row in rows.items():
        counts = " ".join(f"{k}={v}" for k, v in sorted(row.items()))
        lines.append((second, f"{second:4d}s     {len(conns[second] - {0})} conns: {counts}"))
    pods = {s.connection: s.served_by for s in pool.samples if s.connection and s.served_by}
    return "\n".join(
        [line for _, line in sorted(lines, key=lambda entry: entry[0])]
        + [f"connections: {sorted(pods.items())}"]
    )


def _left_alone(note: str) -> int:
    """The connections a ConnectionsHandedOff note says were busy and left alone."""
    found = re.search(r"(\d+) busy left alone", note)
    return int(found.group(1)) if found else 0


def _seconds(micro_time: str) -> float:
    """An Event's eventTime (RFC 3339, microseconds) as a Unix time."""
    return datetime.fromisoformat(micro_time.replace("Z", "+00:00")).timestamp()
