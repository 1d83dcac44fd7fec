"""The box pod runtime: what a scheduler plus a kubelet would do, for local processes.

It watches every Pod. A pending pod without a node is bound (Binding subresource,
round-robin over the nodes its spec allows, scheduling.py) to a box node, or to a
real node the box also runs (whose kubelet then runs it). A pod on a box node gets its own address in the box
network (the /16 the box claimed, 10.244.x.y for the first box: see netns.py) and its containers run as local processes
listening there (each container also gets CONTROL_FILE, a file the test app reads
its run-time settings from, so tests can turn a pod slow and back); its status
(podIP, phase, Ready after the readiness probe passes, container states) is written
through the status subresource. Graceful deletion is honoured: the processes get
SIGTERM, then SIGKILL after the grace period, and the runtime completes the deletion
(grace 0) as a kubelet would. Pods the box cannot run are reported with a reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from aviator.box.addresses import AddressPool
from aviator.box.container import ContainerRunner, port_free
from aviator.box.mirror import Mirror, cancel_all, key_of
from aviator.box.nodes import NODE_IP
from aviator.box.podspec import DEFAULT_PORT, PodPlan, Unsupported, plan_pod
from aviator.box.podstatus import (
    has_controller_owner,
    now_rfc3339,
    running_status,
    unsupported_container_statuses,
    unsupported_status,
)
from aviator.box.scheduling import eligible_nodes
from aviator.kube.client import ApiError, KubeClient
from aviator.kube.resources import PODS

log = logging.getLogger(__name__)

Obj = dict[str, Any]
MAX_GRACE_S = 30.0


class PodRuntime:
    """Runs the pods of the given box nodes as local processes."""

    def __init__(
        self,
        client: KubeClient,
        nodes: list[str],
        log_dir: Path,
        pool: AddressPool,
        argv_for: Callable[[str], list[str] | None] | None = None,
        probe_from: str | None = None,
        real_nodes: tuple[str, ...] = (),
    ) -> None:
        self.client = client
        self.nodes = list(nodes)
        # Pods are bound to these too, and left to their kubelet.
        self.schedulable = [*self.nodes, *real_nodes]
        self.log_dir = log_dir
        self.pool = pool
        # The node's address readiness probes are sent from (None: the system's choice).
        self.probe_from = probe_from
        self.argv_for = argv_for or (lambda _image: None)
        self.workers: dict[str, PodWorker] = {}  # by pod uid
        self._bound = 0
        self._mirror = Mirror(client, PODS, self._on_event)
        self._task: asyncio.Task[None] | None = None
        self.background: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._mirror.run(), name="pod runtime watch")
        await self._mirror.synced.wait()

    async def stop(self) -> None:
        """Stop watching and stop every pod process (SIGTERM, brief grace, SIGKILL)."""
        if self._task is not None:
            await cancel_all([self._task])
        workers = list(self.workers.values())
        self.workers.clear()
        await asyncio.gather(*(w.shutdown(grace_s=2.0) for w in workers), *self.background)

    def pids(self) -> list[int]:
        return [pid for w in self.workers.values() for pid in w.pids()]

    def pod_ips(self) -> dict[str, str]:
        return {w.key: w.pod_ip for w in self.workers.values() if w.pod_ip}

    def next_node(self, spec: Obj) -> str | None:
        """Round robin over the nodes `spec` allows; None: no node does."""
        nodes = eligible_nodes(spec, self.schedulable)
        if not nodes:
            return None
        node = nodes[self._bound % len(nodes)]
        self._bound += 1
        return node

    def _mine(self, pod: Obj) -> bool:
        spec = pod.get("spec", {})
        node = spec.get("nodeName")
        if node:
            return node in self.nodes
        return bool(spec.get("schedulerName", "default-scheduler") == "default-scheduler")

    async def _on_event(self, kind: str, pod: Obj) -> None:
        uid = pod["metadata"]["uid"]
        worker = self.workers.get(uid)
        if kind == "DELETED":
            if worker is not None:
                del self.workers[uid]
                worker.deleted()
            return
        if not self._mine(pod):
            return
        if worker is None:
            phase = pod.get("status", {}).get("phase")
            if pod["metadata"].get("deletionTimestamp"):
                # Nothing of ours runs for it (terminal, or from before this runtime).
                await self._finish_deletion(pod)
                return
            if phase in ("Succeeded", "Failed"):
                return
            worker = PodWorker(self, pod)
            self.workers[uid] = worker
            worker.start()
        worker.update(pod)

    async def _finish_deletion(self, pod: Obj) -> None:
        meta = pod["metadata"]
        with contextlib.suppress(ApiError):
            await self.client.request(
                "DELETE",
                PODS.path(meta.get("namespace"), meta["name"]),
                body={
                    "apiVersion": "v1",
                    "kind": "DeleteOptions",
                    "gracePeriodSeconds": 0,
                    "preconditions": {"uid": meta["uid"]},
                },
            )

    def forget(self, worker: PodWorker) -> None:
        if self.workers.get(worker.uid) is worker:
            del self.workers[worker.uid]


class PodWorker:
    """The life of one pod: bind, address, processes, probes, status, termination."""

    def __init__(self, runtime: PodRuntime, pod: Obj) -> None:
        self.runtime = runtime
        self.pod = pod
        self.uid: str = pod["metadata"]["uid"]
        self.key = key_of(pod)
        self.pod_ip: str | None = None
        self.containers: list[ContainerRunner] = []
        self.terminating = asyncio.Event()
        self.gone = False
        self._dirty = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._start_time = now_rfc3339()
        self._transitions: dict[str, str] = {}
        self._last_ready: bool | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"pod {self.key}")

    def update(self, pod: Obj) -> None:
        self.pod = pod
        if pod["metadata"].get("deletionTimestamp"):
            self.terminating.set()

    def deleted(self) -> None:
        """The pod object is gone (e.g. force-deleted): stop at once, write nothing."""
        self.gone = True
        self.terminating.set()
        if self._task is not None and self._task.done():
            self._release()
            return
        task = asyncio.get_running_loop().create_task(self.shutdown(grace_s=0.0))
        self.runtime.background.add(task)  # keep a reference until it is done
        task.add_done_callback(self.runtime.background.discard)

    def pids(self) -> list[int]:
        return [pid for c in self.containers if (pid := c.pid) is not None]

    async def shutdown(self, grace_s: float) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await asyncio.gather(*(c.stop(grace_s) for c in self.containers))
        self._release()

    def _release(self) -> None:
        self.runtime.pool.release(self.uid)

    # -- the lifecycle ---------------------------------------------------------------

    async def _run(self) -> None:
        try:
            node = await self._bind()
            if node is None:
                return
            await self._start_containers()
            if self.containers:
                writer = asyncio.create_task(self._status_writer())
                try:
                    await self.terminating.wait()
                finally:
                    writer.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await writer
            else:
                await self.terminating.wait()
            await self._terminate()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("pod %s: runtime error", self.key)
        finally:
            self.runtime.forget(self)

    async def _bind(self) -> str | None:
        spec = self.pod.get("spec", {})
        node: str | None = spec.get("nodeName")
        if node:
            return node
        node = self.runtime.next_node(spec)
        if node is None:
            log.warning("pod %s: no box node matches its node selection; left pending", self.key)
            return None
        meta = self.pod["metadata"]
        binding = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        }
        try:
            await self.runtime.client.request(
                "POST", PODS.path(meta["namespace"], meta["name"], "binding"), body=binding
            )
        except ApiError as err:
            if err.not_found:
                return None
            if not err.conflict:
                raise
            node = str(self.pod.get("spec", {}).get("nodeName") or node)
        self.pod.setdefault("spec", {})["nodeName"] = node
        # A real node's kubelet takes it from here.
        return node if node in self.runtime.nodes else None

    def _ports_wanted(self) -> list[int]:
        ports = [
            int(p["containerPort"])
            for c in self.pod.get("spec", {}).get("containers") or []
            for p in c.get("ports") or []
        ]
        return ports or [DEFAULT_PORT]

    async def _start_containers(self) -> None:
        wanted = self._ports_wanted()
        ip = self.runtime.pool.allocate(
            self.uid, usable=lambda a: all(port_free(a, p) for p in wanted)
        )
        try:
            plan: PodPlan = plan_pod(self.pod, ip, NODE_IP)
        except Unsupported as err:
            self.runtime.pool.release(self.uid)
            await self._report_unsupported(err)
            return
        self.pod_ip = ip
        meta = self.pod["metadata"]
        log_dir = self.runtime.log_dir
        for c in plan.containers:
            stem = f"{meta['namespace']}_{meta['name']}_{c.name}"
            log_path = log_dir / f"{stem}.log"
            control = log_dir / f"{stem}.control"
            c = replace(c, env={**c.env, "CONTROL_FILE": str(control)})
            runner = ContainerRunner(
                c,
                ip,
                log_path,
                self._dirty.set,
                argv=self.runtime.argv_for(c.image),
                probe_from=self.runtime.probe_from,
            )
            self.containers.append(runner)
            runner.start()
        self._dirty.set()

    async def _report_unsupported(self, err: Unsupported) -> None:
        log.warning("pod %s: %s", self.key, err)
        status = unsupported_status(
            reason=err.reason,
            message=err.message,
            host_ip=NODE_IP,
            start_time=self._start_time,
            failed=not has_controller_owner(self.pod),
        )
        status["containerStatuses"] = unsupported_container_statuses(
            self.pod, err.reason, err.message
        )
        await self._patch_status(status)

    async def _status_writer(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            status = self._running_status()
            try:
                await self._patch_status(status)
            except ApiError as err:
                if err.not_found:
                    return
                log.warning("pod %s: status update failed: %s", self.key, err)
                self._dirty.set()
                await asyncio.sleep(1.0)
            except (OSError, TimeoutError) as err:
                log.warning("pod %s: status update failed: %s", self.key, err)
                self._dirty.set()
                await asyncio.sleep(1.0)

    def _running_status(self) -> Obj:
        states = [c.state() for c in self.containers]
        ready = all(s.ready for s in states)
        now = now_rfc3339()
        for kind in ("PodReadyToStartContainers", "Initialized", "PodScheduled"):
            self._transitions.setdefault(kind, self._start_time)
        if ready != self._last_ready:
            self._transitions["Ready"] = self._transitions["ContainersReady"] = now
            self._last_ready = ready
        assert self.pod_ip is not None
        return running_status(
            pod_ip=self.pod_ip,
            host_ip=NODE_IP,
            start_time=self._start_time,
            containers=states,
            transitions=self._transitions,
        )

    async def _patch_status(self, status: Obj) -> None:
        if self.gone:
            return
        meta = self.pod["metadata"]
        await self.runtime.client.patch(
            PODS,
            meta["name"],
            {"status": status},
            meta["namespace"],
            subresource="status",
        )

    async def _terminate(self) -> None:
        meta = self.pod["metadata"]
        grace = meta.get("deletionGracePeriodSeconds")
        if grace is None:
            grace = self.pod.get("spec", {}).get("terminationGracePeriodSeconds", 30)
        grace_s = min(float(grace), MAX_GRACE_S)
        if self.containers and not self.gone:
            for c in self.containers:
                c.ready = False
            with contextlib.suppress(ApiError, OSError, TimeoutError):
                await self._patch_status(self._running_status())
        await asyncio.gather(*(c.stop(grace_s) for c in self.containers))
        self._release()
        if not self.gone:
            await self.runtime._finish_deletion(self.pod)
