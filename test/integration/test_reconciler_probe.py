"""`latencySource: probe`: the controller probes pods over HTTP itself, no agents.

EndpointSlices refuse loopback addresses, so the "pods" (local HTTP servers) need real
addresses: the scenario runs in a child process inside its own network namespace
(root only), with a private control plane, the pod network on the namespace's
loopback device, and the controller in process.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration]

POD_NET = "10.77.0.254/16"
PODS = {"fast-1": ("10.77.0.1", 0.0), "fast-2": ("10.77.0.2", 0.0), "slow-1": ("10.77.0.3", 0.15)}
PORT = 18080


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a network namespace")
def test_probe_source_routes_to_fast_pods(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, __file__],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=Path(__file__).resolve().parents[2],
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    assert "probe scenario ok" in result.stdout


async def _scenario(kubeconfig: str) -> None:
    from aiohttp import web
    from integration_support import (
        create_pod,
        create_policy,
        create_service,
        endpoint_pods,
        eventually,
        get_policy,
        running_controller,
        slices_of,
    )

    from aviator.kube import KubeClient
    from aviator.kube.resources import NAMESPACES, SERVICEACCOUNTS

    runners = []
    for ip, delay in PODS.values():

        async def answer(_: web.Request, delay: float = delay) -> web.Response:
            await asyncio.sleep(delay)
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_get("/healthz", answer)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await runner.setup()
        await web.TCPSite(runner, ip, PORT).start()
        runners.append(runner)

    kube = await KubeClient.load(kubeconfig)
    ns = "probe"
    await kube.create(
        NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
    )
    sa = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}}
    await kube.create(SERVICEACCOUNTS, sa, ns)
    await create_service(kube, ns, "web", {"app": "web"})
    for name, (ip, _) in PODS.items():
        await create_pod(kube, ns, name, ip, {"app": "web"})
    async with running_controller(Path(kubeconfig), ns):
        await create_policy(
            kube,
            ns,
            "p",
            "web",
            evaluationInterval="500ms",
            latencySource="probe",
            targetPort=PORT,
            probePath="/healthz",
            selection={"mode": "threshold"},
            latencyThreshold="100ms",
            dampening={"enabled": False},
        )

        async def fast_only() -> bool:
            pods = endpoint_pods(await slices_of(kube, ns, "web-aviator", ours=True))
            return pods == ["fast-1", "fast-2"]

        await eventually(fast_only, within=60)

        async def reported() -> dict[str, object] | None:
            st = ((await get_policy(kube, ns, "p")) or {}).get("status") or {}
            return st if st.get("source") == "probe" and st.get("activePods") == 2 else None

        st = await eventually(reported)
        assert st["totalPods"] == 3, st
        slow = next(r for r in st["pods"] if r["name"] == "slow-1")  # type: ignore[attr-defined]
        assert slow["state"] == "standby" and slow["p99Ms"] >= 150, slow
    await kube.close()
    for runner in runners:
        await runner.cleanup()


def _enter_network_namespace() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    if libc.unshare(0x40000000) != 0:  # CLONE_NEWNET
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET)")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(["ip", "addr", "add", POD_NET, "dev", "lo"], check=True)


def main() -> int:
    import uvloop
    from integration_support import install_crd

    from aviator.testing.controlplane import ControlPlane

    _enter_network_namespace()
    with ControlPlane(controllers=False) as cp:
        install_crd(cp)
        uvloop.run(_scenario(str(cp.kubeconfig)))
    print("probe scenario ok")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
