"""`aviator box up | demo | down | status`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from aviator.box.box import Box, BoxOptions
from aviator.box.console import print_access, say
from aviator.box.demo import run_demo
from aviator.box.netns import BoxNetwork, NetworkUnavailable
from aviator.box.state import alive, read_status, remove_status
from aviator.testing.controlplane import ControlPlaneError

DEFAULT_WORKDIR = Path(".box")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="box_command", metavar="ACTION", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--workdir",
            type=Path,
            default=DEFAULT_WORKDIR,
            help="where the box keeps its kubeconfig, status file and logs (default .box)",
        )

    def starting(p: argparse.ArgumentParser) -> None:
        common(p)
        p.add_argument(
            "--nodes",
            type=int,
            default=2,
            help="number of box nodes (default 2; 0 with --real-node: the real node only)",
        )
        p.add_argument(
            "--zones",
            type=int,
            default=1,
            help="spread the nodes round robin over this many zones, box-a, box-b, ...; "
            "the box proxy then gives each Service an address per zone that follows "
            "zone hints as kube-proxy does (default 1: every node in zone box)",
        )
        p.add_argument(
            "--latency-source",
            choices=("auto", "ebpf", "probe"),
            default="auto",
            help="the agents' --latency-source (default auto)",
        )
        p.add_argument(
            "--duration", type=float, default=None, help="stop after SECONDS (default: Ctrl-C)"
        )
        p.add_argument("--log-level", default="warning")
        p.add_argument(
            "--bin-dir",
            type=Path,
            default=None,
            help="where kube-apiserver, etcd, kube-controller-manager and kubectl are "
            "(`make controlplane` builds them into the repository's bin/; default: "
            "$AVIATOR_BIN_DIR, else ./bin, else PATH)",
        )

    up = sub.add_parser("up", help="start the box and keep it running in the foreground")
    starting(up)
    up.add_argument(
        "--proxy",
        choices=("box", "kube-proxy"),
        default="box",
        help="box: the box's own Service proxy (host addresses 127.0.200.x); kube-proxy: "
        "also the real kube-proxy (nftables) on the Services' ClusterIPs inside the box "
        "(`make node-components` builds it)",
    )
    up.add_argument(
        "--real-node",
        action="store_true",
        help="also one real node, box-real-1: kubelet + containerd + runc + CNI bridge, "
        "images from `make images` (bin/images/*.tar)",
    )
    up.add_argument(
        "--external-metrics",
        action="store_true",
        help="also register the controller as the external metrics API "
        "(config/external-metrics): HPAs scale on a Service's p99 (docs/autoscaling.md)",
    )
    up.add_argument(
        "--no-aviator",
        dest="aviator",
        action="store_false",
        help="do not install the CRD nor start the controller and agents",
    )
    demo = sub.add_parser("demo", help="the quick-start, live: fast and slow pods, policy, p99")
    starting(demo)
    demo.add_argument(
        "--stop-after-converged",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop SECONDS after routing converges to the fast pods (--duration still "
        "bounds the whole demo); for scripts that want the demo's result, not a clock",
    )
    down = sub.add_parser("down", help="stop a box started with `up` in another terminal")
    common(down)
    status = sub.add_parser("status", help="show a running box: kubeconfig, services, pods")
    common(status)
    status.add_argument("--json", action="store_true", help="print the raw status file")


def run(args: argparse.Namespace) -> int:
    action: str = args.box_command
    if action == "down":
        return down(args.workdir)
    if action == "status":
        return show_status(args.workdir, as_json=args.json)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    existing = read_status(args.workdir)
    if existing and alive(existing.get("pid")) and existing.get("pid") != os.getpid():
        print(
            f"a box is already running (pid {existing['pid']}) in {args.workdir}: "
            "use `aviator box status`, or `aviator box down` first",
            file=sys.stderr,
        )
        return 1
    try:
        network = BoxNetwork.enter()
    except NetworkUnavailable as err:
        print(f"aviator box: {err}", file=sys.stderr)
        return 1
    options = BoxOptions(
        workdir=args.workdir,
        nodes=args.nodes,
        zones=getattr(args, "zones", 1),
        aviator=getattr(args, "aviator", True),
        latency_source=args.latency_source,
        bin_dir=args.bin_dir,
        proxy=getattr(args, "proxy", "box"),
        real_node=getattr(args, "real_node", False),
        external_metrics=getattr(args, "external_metrics", False),
    )
    try:
        if action == "demo":
            return _run_async(run_demo(options, network, args.duration, args.stop_after_converged))
        return _run_async(up(options, network, args.duration))
    except ControlPlaneError as err:
        print(f"aviator box: the control plane did not start: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _run_async(main: Coroutine[Any, Any, int]) -> int:
    """The box runs on asyncio's own loop, not uvloop (the controller's and agent's).
    It starts its components and pods with a `preexec_fn` (they die with it) while its
    worker threads start processes too (nft reads, the spawner thread); on uvloop 0.21
    and 0.23 alike the box then died of SIGSEGV inside the loop in about one start in
    four with kube-proxy, on asyncio's loop in none of 14. Its speed does not matter."""
    with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
        result: int = runner.run(main)
    return result


async def wait_for_stop(duration: float | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=duration)


async def up(options: BoxOptions, network: BoxNetwork, duration: float | None) -> int:
    box = Box(options, network, progress=say)
    try:
        await box.start()
        print_access(box.kubeconfig, box.options.workdir)
        await wait_for_stop(duration)
    finally:
        await box.stop()
    return 0


def down(workdir: Path, timeout_s: float = 60.0) -> int:
    status = read_status(workdir)
    if status is None:
        print(f"no box status in {workdir}", file=sys.stderr)
        return 1
    pid = status.get("pid")
    if alive(pid):
        os.kill(int(pid), signal.SIGTERM)  # type: ignore[arg-type]
        deadline = time.monotonic() + timeout_s
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
    leftovers = [
        p
        for p in [
            *status.get("controlplane", {}).get("pids", []),
            *status.get("pod_pids", []),
            *(c.get("pid") for c in status.get("components", {}).values()),
        ]
        if p and alive(p)
    ]
    for p in leftovers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)
    remove_status(workdir)
    print(f"box stopped{f' ({len(leftovers)} stray processes killed)' if leftovers else ''}")
    return 0


def show_status(workdir: Path, as_json: bool) -> int:
    status = read_status(workdir)
    if status is None or not alive(status.get("pid")):
        print(f"no box running in {workdir}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(status, indent=2, sort_keys=True))
        return 0
    print(f"box pid {status['pid']} ({status['phase']}), API server {status['server']}")
    print(f"export KUBECONFIG={status['kubeconfig']}")
    print(f"nodes: {', '.join(status.get('nodes', []))}")
    print(f"AviatorPolicy CRD: {status.get('crd')}")
    for name, comp in sorted(status.get("components", {}).items()):
        print(f"{name}: {comp['state']} pid={comp['pid']} restarts={comp['restarts']}")
    print("services (box proxy addresses):")
    for svc, ports in sorted(status.get("services", {}).items()):
        print(f"  {svc}: {', '.join(f'{p}={a}' for p, a in ports.items())}")
    print("pods:")
    for pod, ip in sorted(status.get("pods", {}).items()):
        print(f"  {pod}: {ip}")
    return 0
