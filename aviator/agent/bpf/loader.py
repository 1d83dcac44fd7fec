"""Compiling, loading and attaching bpf/latency.bpf.c with BCC.

Every way this can fail on a real node ends in `BpfUnavailable` with a reason an
operator can act on (the agent then falls back to probing): no privilege, no BTF, no
tracefs, a kernel without the tracepoints, no kernel headers, no BCC, a compile error,
a verifier rejection. Checks that can be made up front are made before compiling, so
the common cases get a precise message instead of a compiler's.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

from aviator.agent.bpf import abi as bpf_abi
from aviator.agent.bpf.btf import (
    VMLINUX_BTF,
    Btf,
    BtfError,
    has_skb_offsets,
    netns_offsets,
    skb_offsets,
    sock_offsets,
    tcp_offsets,
)
from aviator.agent.bpf.model import BpfUnavailable
from aviator.agent.bpf.seed import Listener

# The C source and its headers, the ABI header (abi.HEADER_NAME) among them, are one
# directory: the repository's bpf/, shipped inside the package as aviator.agent.bpf.src
# (setup.py). AVIATOR_BPF_SOURCE points at another latency.bpf.c, with its headers.
SOURCE_PACKAGE = "aviator.agent.bpf.src"


def _shipped_source() -> Path:
    # Installed packages are directories (BCC needs real files); anything else shows up
    # as "BPF source ... not found" when the program is loaded.
    entry = files(SOURCE_PACKAGE) / "latency.bpf.c"
    return entry if isinstance(entry, Path) else Path(str(entry))


SOURCE = Path(os.environ.get("AVIATOR_BPF_SOURCE") or _shipped_source())

RAW_SEND_TRACEPOINT = "tcp_sendmsg_locked"
# (tracepoint, BCC function name). Classic tracepoints are attached by BCC as soon as the
# program loads; raw ones by LoadedProgram.attach().
_RAW_SEND = (RAW_SEND_TRACEPOINT, "on_tcp_sendmsg_locked")
_RAW_RECV = ("tcp_probe", "on_tcp_probe")
# The payload hooks (bpf/payload.h): each syscall that hands bytes to or takes them from
# a socket, and the two tracepoints inside it that name the socket and the byte count.
# sock:sock_send_length is also the send hook where tcp_sendmsg_locked is missing.
_FALLBACK_SEND_TRACEPOINT = ("sock:sock_send_length", "tracepoint__sock__sock_send_length")
_PAYLOAD_SYSCALLS = ("read", "readv", "recvfrom", "recvmsg", "write", "writev", "sendto", "sendmsg")
_TRACEPOINTS = (
    ("sock:inet_sock_set_state", "tracepoint__sock__inet_sock_set_state"),
    ("tcp:tcp_destroy_sock", "tracepoint__tcp__tcp_destroy_sock"),
    ("sock:sock_recv_length", "tracepoint__sock__sock_recv_length"),
    _FALLBACK_SEND_TRACEPOINT,
    *(
        (f"syscalls:sys_enter_{name}", f"tracepoint__syscalls__sys_enter_{name}")
        for name in _PAYLOAD_SYSCALLS
    ),
)
_RECV_TRACEPOINT = ("tcp:tcp_probe", "tracepoint__tcp__tcp_probe")
# Programs reached by tail calls (bpf/h2.h): the HTTP/2 parser's continuation, the
# sweep that ends a connection's streams, the protocol of an adopted connection's first
# bytes, the reader of an HTTP/1 request's target (bpf/payload.h) and the parser's
# frames-only continuation once its full runs are spent, at their slots of the
# h2_progs array.
_TAIL_CALLS = (
    ("h2_progs", 0, "h2_parse_more"),
    ("h2_progs", 1, "h2_sweep_more"),
    ("h2_progs", 2, "h2_adopt_more"),
    ("h2_progs", 3, "http1_target_run"),
    ("h2_progs", 4, "h2_skim_more"),
)

_TRACEFS_CANDIDATES = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))
_CAP_SYS_ADMIN = 21
_CAP_PERFMON = 38
_CAP_BPF = 39


def _effective_capabilities() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def check_privileges() -> None:
    caps = _effective_capabilities()
    has = lambda cap: bool(caps >> cap & 1)  # noqa: E731
    if not (has(_CAP_SYS_ADMIN) or (has(_CAP_BPF) and has(_CAP_PERFMON))):
        raise BpfUnavailable(
            "not privileged to load BPF programs: run as root or with "
            "CAP_BPF and CAP_PERFMON (plus CAP_NET_ADMIN)"
        )


def tracefs_root() -> Path:
    """The mounted tracefs, mounting it if needed (BCC reads tracepoint formats there)."""
    for path in _TRACEFS_CANDIDATES:
        if (path / "events").is_dir():
            return path
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    target = _TRACEFS_CANDIDATES[0]
    if libc.mount(b"nodev", str(target).encode(), b"tracefs", 0, None) == 0:
        return target
    err = ctypes.get_errno()
    raise BpfUnavailable(
        f"tracefs is not mounted and mounting it at {target} failed ({os.strerror(err)}); "
        "mount it (mount -t tracefs nodev /sys/kernel/tracing) or give the agent "
        "/sys/kernel/tracing"
    )


def check_tracepoints(tracefs: Path) -> bool:
    """Whether the kernel has every tracepoint needed; returns whether the raw
    `tcp_sendmsg_locked` tracepoint exists (else `sock:sock_send_length` is used)."""
    needed = [tp for tp, _ in (*_TRACEPOINTS, _RECV_TRACEPOINT)]
    missing = [tp for tp in needed if not (tracefs / "events" / tp.replace(":", "/")).is_dir()]
    has_raw_send = (tracefs / "events" / "tcp" / RAW_SEND_TRACEPOINT).is_dir()
    if missing and all(tp.startswith("syscalls:") for tp in missing):
        raise BpfUnavailable(
            f"kernel without syscall tracepoints (CONFIG_FTRACE_SYSCALLS): missing "
            f"{', '.join(missing)}"
        )
    if missing:
        raise BpfUnavailable(
            f"kernel too old: missing tracepoints {', '.join(missing)} (about Linux 6.1 or later needed)"
        )
    return has_raw_send


def check_headers() -> None:
    """BCC compiles against kernel headers; say so clearly when it will find none.

    Debian and Ubuntu split headers into an arch package (`build`: config, generated
    files) and a common one (`source`: the include tree); BCC needs both links.
    """
    release = os.uname().release
    if os.environ.get("BCC_KERNEL_SOURCE"):
        return
    if Path("/sys/kernel/kheaders.tar.xz").exists():
        return
    modules = Path(f"/lib/modules/{release}")
    kconfig = "include/linux/kconfig.h"
    if (modules / "build").is_dir() and any(
        (modules / d / kconfig).exists() for d in ("build", "source")
    ):
        return
    if (modules / "build").is_dir():
        raise BpfUnavailable(
            f"kernel headers incomplete: {modules}/build has no include tree and "
            f"{modules}/source is missing; link it to the matching linux-headers-*-common "
            "directory"
        )
    raise BpfUnavailable(
        f"kernel headers missing: no {modules}/build and the kernel has no kheaders; "
        "install linux-headers for this kernel (any recent version works: the program "
        "reads only tracepoint arguments and BTF-located fields)"
    )


# The kernel release from which the verifier knows the may_goto instruction.
MAY_GOTO_SINCE = (6, 9)


def kernel_has_may_goto(release: str) -> bool:
    """Whether a kernel of this release (`uname -r`) takes may_goto, which the HTTP/2
    parser's skim and the stream sweep loop with (bpf/latency.bpf.c: COND_BREAK);
    without it the program keeps to bounded loops (no skim: a call's frames beyond the
    full parser's budget give the connection up)."""
    m = re.match(r"(\d+)\.(\d+)", release)
    return m is not None and (int(m[1]), int(m[2])) >= MAY_GOTO_SINCE


def compile_flags(
    btf: Btf,
    *,
    max_sockets: int,
    max_endpoints: int,
    max_listeners: int,
    raw_send: bool,
    raw_recv: bool,
    max_h2_conns: int = 4096,
    include_dir: Path = SOURCE.parent,
    may_goto: bool = False,
) -> list[str]:
    try:
        offsets = sock_offsets(btf)
        offsets.update(netns_offsets(btf))
        if raw_recv:
            offsets.update(skb_offsets(btf))
    except BtfError as exc:
        raise BpfUnavailable(f"kernel BTF lacks a needed struct field: {exc}") from exc
    # Only the hand-off iterator (bpf/handoff.h) and the HTTP/2 parser's end at the peer's
    # FIN (bpf/h2_streams.h) need these; without them the one is left out and the other
    # ends the streams at once.
    with contextlib.suppress(BtfError):
        offsets.update(tcp_offsets(btf))
    flags = [f"-DOFF_{name.upper()}={off}" for name, off in sorted(offsets.items())]
    flags += [
        f"-I{include_dir}",
        f"-DMAX_SOCKETS={max_sockets}",
        f"-DMAX_ENDPOINTS={max_endpoints}",
        f"-DMAX_LISTENERS={max_listeners}",
        f"-DMAX_H2_CONNS={max_h2_conns}",
    ]
    if raw_send:
        flags.append("-DSEND_HOOK_RAW")
    if raw_recv:
        flags.append("-DRECV_HOOK_RAW")
    if may_goto:
        flags.append("-DHAVE_MAY_GOTO")
    return flags


@contextlib.contextmanager
def _captured_stderr() -> Iterator[list[str]]:
    """Capture what BCC's C++ side (clang, the verifier log) writes to fd 2."""
    out: list[str] = []
    with tempfile.TemporaryFile() as tmp:
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        try:
            yield out
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            out.append(tmp.read().decode("utf-8", "replace"))


def _tail(text: str, lines: int = 12) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _classify_load_failure(exc: Exception, log: str) -> BpfUnavailable:
    message = str(exc)
    if "Failed to compile" in message:
        if "kernel headers" in log or "kconfig.h" in log:
            return BpfUnavailable(f"kernel headers unusable by BCC:\n{_tail(log)}")
        return BpfUnavailable(f"BPF program failed to compile:\n{_tail(log)}")
    if "Failed to load" in message:
        if "Permission denied" in message and "processed" in log:
            return BpfUnavailable(f"BPF verifier rejected the program:\n{_tail(log)}")
        if "Operation not permitted" in message or "Permission denied" in message:
            return BpfUnavailable(f"kernel refused to load BPF programs (EPERM): {message}")
        return BpfUnavailable(f"BPF program failed to load: {message}\n{_tail(log)}")
    if "Failed to attach" in message:
        return BpfUnavailable(f"attaching a tracepoint failed: {message}")
    return BpfUnavailable(f"BPF load failed: {message}\n{_tail(log)}")


@dataclass
class LoadedProgram:
    """A compiled program with its hooks; `bpf` is the bcc.BPF object.

    `raw_send`: sends seen by the raw tracepoint tcp_sendmsg_locked (else by
    sock:sock_send_length); `raw_recv`: tcp_probe attached as a raw tracepoint (cheaper
    than the classic one, which builds a trace record per segment); `header`: the ABI
    header compiled into it (`abi`, checked against its maps on load).
    """

    bpf: Any
    raw_send: bool
    raw_recv: bool = False
    header: Path = field(kw_only=True)
    # The kfunc the hand-off iterator calls (bpf/handoff.h), by its BTF id; None when
    # this kernel has none (read with the offsets, so BTF is parsed once).
    sock_destroy_id: int | None = field(default=None, kw_only=True)

    @functools.cached_property
    def abi(self) -> bpf_abi.LatencyAbi:
        return bpf_abi.load(self.header)

    @property
    def send_hook(self) -> str:
        if self.raw_send:
            return f"raw_tracepoint:{RAW_SEND_TRACEPOINT}"
        return f"tracepoint:{_FALLBACK_SEND_TRACEPOINT[0]}"

    @property
    def recv_hook(self) -> str:
        if self.raw_recv:
            return f"raw_tracepoint:{_RAW_RECV[0]}"
        return f"tracepoint:{_RECV_TRACEPOINT[0]}"

    def _tracepoints(self) -> list[tuple[str, str]]:
        tps = list(_TRACEPOINTS)
        if not self.raw_recv:
            tps.append(_RECV_TRACEPOINT)
        return tps

    def load_tail_calls(self) -> None:
        """Load the programs reached by tail calls and put them in their arrays."""
        import ctypes

        for table, slot, fn_name in _TAIL_CALLS:
            fn = self.bpf.load_func(fn_name.encode(), self.bpf.TRACEPOINT)
            progs = self.bpf[table.encode()]
            progs[ctypes.c_int(slot)] = ctypes.c_int(fn.fd)

    def _raw_tracepoints(self) -> list[tuple[str, str]]:
        return [hook for hook, on in ((_RAW_SEND, self.raw_send), (_RAW_RECV, self.raw_recv)) if on]

    def attach(self) -> None:
        """Attach every hook that is not attached (idempotent)."""
        for tp, fn in self._tracepoints():
            if tp.encode() not in self.bpf.tracepoint_fds:
                self.bpf.attach_tracepoint(tp=tp.encode(), fn_name=fn.encode())
        for tp, fn in self._raw_tracepoints():
            if tp.encode() not in self.bpf.raw_tracepoint_fds:
                self.bpf.attach_raw_tracepoint(tp=tp.encode(), fn_name=fn.encode())

    def detach(self) -> None:
        """Detach every hook; maps and counters stay (for overhead comparisons)."""
        for tp in list(self.bpf.tracepoint_fds):
            self.bpf.detach_tracepoint(tp)
        for tp in list(self.bpf.raw_tracepoint_fds):
            self.bpf.detach_raw_tracepoint(tp)

    def prog_fds(self) -> dict[str, int]:
        """File descriptors of the loaded programs, by function name."""
        return {name.decode(): fn.fd for name, fn in self.bpf.funcs.items()}

    def seed_listeners(self, listeners: Iterable[Listener]) -> int:
        table = self.bpf[b"listeners"]
        n = 0
        for raw, port in listeners:
            key = table.Key()
            for i, byte in enumerate(raw):
                key.addr[i] = byte
            key.port = port
            table[key] = table.Leaf(1)
            n += 1
        return n

    def start_adopting(self) -> None:
        """Let the program classify sockets it first sees mid-connection (after seeding)."""
        table = self.bpf[b"config"]
        table[table.Key(self.abi.config_adopting)] = table.Leaf(1)

    def set_agent(self, pid: int) -> None:
        """The process whose requests are keep-warm probes (the agent: the loader)."""
        table = self.bpf[b"config"]
        table[table.Key(self.abi.header.const("CONFIG_AGENT_TGID"))] = table.Leaf(pid)

    def close(self) -> None:
        self.bpf.cleanup()


def load_program(
    *,
    max_sockets: int,
    max_endpoints: int,
    max_listeners: int,
    max_h2_conns: int = 4096,
    source: Path = SOURCE,
    allow_raw_send: bool = True,
    allow_raw_recv: bool = True,
) -> LoadedProgram:
    """Preflight, compile, load and attach the program, or raise BpfUnavailable.

    `allow_raw_send=False` uses the `sock:sock_send_length` fallback even where the
    raw tracepoint exists; `allow_raw_recv=False` attaches tcp_probe as a classic
    tracepoint (to test and compare the alternatives).
    """
    if os.uname().sysname != "Linux":
        raise BpfUnavailable("eBPF needs Linux")
    check_privileges()
    if not VMLINUX_BTF.exists():
        raise BpfUnavailable(f"kernel has no BTF ({VMLINUX_BTF} missing; CONFIG_DEBUG_INFO_BTF)")
    try:
        btf = Btf.from_file()
    except BtfError as exc:
        raise BpfUnavailable(f"kernel BTF unreadable: {exc}") from exc
    tracefs = tracefs_root()
    raw_send = check_tracepoints(tracefs) and allow_raw_send
    raw_recv = allow_raw_recv and has_skb_offsets(btf)
    check_headers()
    if not source.is_file():
        raise BpfUnavailable(f"BPF source {source} not found")
    try:
        import bcc  # imported late: BCC picks its tracefs path at import time
    except ImportError as exc:
        raise BpfUnavailable(f"BCC is not installed (Debian/Ubuntu: python3-bpfcc): {exc}") from exc

    sizes = (max_sockets, max_endpoints, max_listeners, max_h2_conns)
    try:
        return _compile_and_attach(bcc, btf, source, raw_send, raw_recv, *sizes)
    except _RawTracepointUnavailable:
        # Listed in tracefs but not attachable as raw tracepoints: classic ones only.
        return _compile_and_attach(bcc, btf, source, False, False, *sizes)


# The kfunc that ends a connection from BPF (Linux 6.5+), called by bpf/handoff.h.
SOCK_DESTROY_KFUNC = "bpf_sock_destroy"

# Parts of the program that use maps or declare probes. BCC rewrites map calls
# (`table.lookup(...)`) and builds tracepoint argument structs only in the main file,
# so these are pasted into it where it (or a part pasted before) includes them,
# instead of compiled as headers.
INLINED_PARTS = ("h2.h", "h2_streams.h", "payload.h", "handoff.h")


def program_text(source: Path) -> str:
    """The program's C text with INLINED_PARTS pasted in place of their #include."""
    out: list[str] = []
    for line in source.read_text().splitlines(keepends=True):
        stripped = line.strip()
        name = stripped.removeprefix("#include").strip().strip('"')
        if stripped.startswith("#include") and name in INLINED_PARTS:
            out.append(f"// ---- {name} ----\n")
            out.append(program_text(source.parent / name))
            out.append(f"// ---- end of {name} ----\n")
        else:
            out.append(line)
    return "".join(out)


class _RawTracepointUnavailable(Exception):
    pass


def _compile_and_attach(
    bcc: Any,
    btf: Btf,
    source: Path,
    raw_send: bool,
    raw_recv: bool,
    max_sockets: int,
    max_endpoints: int,
    max_listeners: int,
    max_h2_conns: int,
) -> LoadedProgram:
    cflags = compile_flags(
        btf,
        max_sockets=max_sockets,
        max_endpoints=max_endpoints,
        max_listeners=max_listeners,
        max_h2_conns=max_h2_conns,
        raw_send=raw_send,
        raw_recv=raw_recv,
        include_dir=source.parent,
        may_goto=kernel_has_may_goto(os.uname().release),
    )
    program: LoadedProgram | None = None
    failure: Exception | None = None
    # Compiling loads the classic tracepoint programs; attach() loads the raw ones: the
    # verifier's log of either goes to fd 2 and is kept for the error message.
    with _captured_stderr() as log:
        try:
            bpf = bcc.BPF(text=program_text(source).encode(), cflags=cflags)
            header = source.parent / bpf_abi.HEADER_NAME
            program = LoadedProgram(
                bpf=bpf,
                raw_send=raw_send,
                raw_recv=raw_recv,
                header=header,
                sock_destroy_id=btf.func_id(SOCK_DESTROY_KFUNC),
            )
            program.attach()
            program.load_tail_calls()
            bpf_abi.check_program(program.abi, bpf)
        except Exception as exc:  # BCC raises bare Exception for every failure
            failure = exc
    if failure is None and program is not None:
        return program
    assert failure is not None
    if program is not None:
        program.close()
        if (raw_send or raw_recv) and "raw tracepoint" in str(failure):
            raise _RawTracepointUnavailable(str(failure)) from failure
    if isinstance(failure, bpf_abi.AbiError):
        raise BpfUnavailable(f"BPF program does not match this agent: {failure}") from failure
    if isinstance(failure, OSError) and failure.errno == errno.EPERM:
        raise BpfUnavailable(f"kernel refused BPF (EPERM): {failure}") from failure
    raise _classify_load_failure(failure, "".join(log)) from failure
