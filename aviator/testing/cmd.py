"""`aviator controlplane`: run the local control plane in the foreground."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from aviator.testing.controlplane import ControlPlane, ControlPlaneError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", type=Path, help="state directory (default: a temp dir)")
    parser.add_argument(
        "--no-controllers",
        action="store_true",
        help="do not start kube-controller-manager",
    )
    parser.add_argument(
        "--bin-dir",
        type=Path,
        help="where etcd, kube-apiserver and kube-controller-manager are "
        "(default: $AVIATOR_BIN_DIR, else ./bin, else PATH)",
    )


def run(args: argparse.Namespace) -> int:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    cp = ControlPlane(
        workdir=args.workdir, controllers=not args.no_controllers, bin_dir=args.bin_dir
    )
    try:
        cp.start()
    except ControlPlaneError as err:
        print(f"aviator controlplane: {err}")
        return 1
    print(f"control plane ready at {cp.server}")
    print(f"export KUBECONFIG={cp.kubeconfig}")
    stop.wait()
    cp.stop()
    return 0
