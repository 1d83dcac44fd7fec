"""The real node's runc, minus the capabilities this machine cannot grant.

A machine that is itself a container may lack capabilities in its bounding set (one
such host lacks CAP_SYS_RESOURCE); runc then fails every container that asks for one
("unable to apply caps: operation not permitted"), although the container would run
without it (the agent's SYS_RESOURCE raises RLIMIT_MEMLOCK, which kernels since 5.11
no longer apply to BPF maps). containerd runs `python -m aviator.box.capabilities`
(through a small script, realnode.py) in place of runc: on `create` and `run` it
removes from the bundle's config.json every capability outside its own bounding set,
notes which in the file $BOX_RUNC_LOG (the node's runc.log), then execs runc with the
same arguments.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

# capability(7) numbers, in order (linux/capability.h).
NAMES = (
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
)
SETS = ("bounding", "effective", "inheritable", "permitted", "ambient")


def bounding_set(status: str) -> int:
    """CapBnd of a /proc/<pid>/status text."""
    for line in status.splitlines():
        if line.startswith("CapBnd:"):
            return int(line.split()[1], 16)
    raise ValueError("no CapBnd line")


def grantable(name: str, bounding: int) -> bool:
    """Whether `CAP_NAME` is in the bounding set; names this table does not know are
    left for runc to judge."""
    short = name.removeprefix("CAP_")
    if short not in NAMES:
        return True
    return bool(bounding >> NAMES.index(short) & 1)


def strip(config: dict[str, Any], bounding: int) -> list[str]:
    """Remove the capabilities outside `bounding` from an OCI config; the removed names."""
    caps = (config.get("process") or {}).get("capabilities") or {}
    dropped: set[str] = set()
    for which in SETS:
        names = caps.get(which)
        if names:
            caps[which] = [n for n in names if grantable(n, bounding)]
            dropped.update(n for n in names if not grantable(n, bounding))
    return sorted(dropped)


def bundle_of(argv: list[str]) -> Path | None:
    """The bundle of a `runc ... create|run ...` command line, or None."""
    if not {"create", "run"} & set(argv):
        return None
    for i, arg in enumerate(argv):
        if arg in ("--bundle", "-b") and i + 1 < len(argv):
            return Path(argv[i + 1])
        if arg.startswith("--bundle="):
            return Path(arg.split("=", 1)[1])
    return Path.cwd()  # runc's default bundle


def wrapper(python: str, log: Path) -> str:
    """The script containerd runs as runc (its BinaryName)."""
    return "\n".join(
        [
            "#!/bin/sh",
            'case " $* " in',
            f'  *" create "*|*" run "*) BOX_RUNC_LOG="{log}" exec "{python}" -m {__name__} "$@" ;;',
            "esac",
            'exec runc "$@"',
            "",
        ]
    )


def main(argv: list[str]) -> None:
    bundle = bundle_of(argv)
    if bundle is not None and (bundle / "config.json").exists():
        path = bundle / "config.json"
        config = json.loads(path.read_text())
        dropped = strip(config, bounding_set(Path("/proc/self/status").read_text()))
        if dropped:
            path.write_text(json.dumps(config))
            log = os.environ.get("BOX_RUNC_LOG")
            if log:
                with open(log, "a") as out:
                    out.write(f"{bundle.name}: not in this machine's bounding set: {dropped}\n")
    os.execvp("runc", ["runc", *argv])


if __name__ == "__main__":
    main(sys.argv[1:])
