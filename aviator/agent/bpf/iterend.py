"""The hand-off iterator of bpf/handoff.h, loaded: its kfunc call rewritten, and a link
to run it with.

BCC compiles C to BPF but cannot emit a kfunc call (a `call` instruction whose source
register field is BPF_PSEUDO_KFUNC_CALL and whose immediate is the kfunc's BTF type id
in vmlinux). The iterator calls helper number KFUNC_PLACEHOLDER (bpf/latency.h) in its
place; before the program is loaded, `rewrite_kfunc_call` turns exactly that one call
into a call of `bpf_sock_destroy` in the instructions BCC holds. The verifier then
checks it as any kfunc call (the kernel allows bpf_sock_destroy only in iterators over
TCP and UDP sockets).

`KernelEnder.end` is the one call the hand-off makes: name one connection by its
cookie in `handoff_orders`, run the iterator in the connection's network namespace,
read what it did. `load_kernel_ender` raises `BpfUnavailable` with the reason where the
kernel cannot (no bpf_sock_destroy before Linux 6.5, no BPF iterators, the program
built without the TCP offsets); the agent then ends connections through sock_diag.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aviator.agent.bpf.cheader import Header
from aviator.agent.bpf.loader import SOCK_DESTROY_KFUNC, LoadedProgram
from aviator.agent.bpf.model import BpfUnavailable

log = logging.getLogger(__name__)

ITERATOR = b"bpf_iter__tcp"
_BPF_CALL = 0x85  # BPF_JMP | BPF_CALL
_BPF_PSEUDO_KFUNC_CALL = 2
_INSN = 8


def rewrite_kfunc_call(code: bytearray, placeholder: int, btf_id: int) -> None:
    """Rewrite the one helper call to `placeholder` in `code` (BPF instructions, 8 bytes
    each, little-endian) into a kfunc call of BTF type `btf_id`. ValueError unless there
    is exactly one such call: a second (or none) means the program is not the one this
    was written for."""
    if len(code) % _INSN:
        raise ValueError(f"{len(code)} bytes is not a whole number of instructions")
    found = [
        at
        for at in range(0, len(code), _INSN)
        if code[at] == _BPF_CALL
        and code[at + 1] >> 4 == 0  # a helper call (pseudo calls have a source register)
        and struct.unpack_from("<i", code, at + 4)[0] == placeholder
    ]
    if len(found) != 1:
        raise ValueError(f"{len(found)} calls of helper {placeholder:#x}, expected one")
    (at,) = found
    code[at + 1] = (code[at + 1] & 0x0F) | (_BPF_PSEUDO_KFUNC_CALL << 4)
    struct.pack_into("<hi", code, at + 2, 0, btf_id)  # offset 0: a vmlinux kfunc


@dataclass
class HandOffIterator:
    """A link of the loaded iterator: `create()` makes a file whose read runs it over
    the TCP sockets of the calling thread's network namespace (once: read it to the
    end, close it, create another for the next run)."""

    link_fd: int
    _lib: Any

    def create(self) -> int:
        fd = int(self._lib.bcc_iter_create(self.link_fd))
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"creating the hand-off iterator: {os.strerror(err)}")
        return fd

    def run(self) -> None:
        """One run in this thread's namespace (read to the end: the output is empty)."""
        fd = self.create()
        try:
            while os.read(fd, 4096):
                pass
        finally:
            os.close(fd)

    def close(self) -> None:
        if self.link_fd >= 0:
            os.close(self.link_fd)
            self.link_fd = -1


class KernelEnder:
    """Ends one connection at a time from inside the kernel, if it is quiet there."""

    def __init__(self, iterator: HandOffIterator, orders: Any, header: Header) -> None:
        self.iterator = iterator
        self.failure: str | None = None
        self._orders = orders  # the `handoff_orders` map (a BCC table)
        outcomes = header.enum("handoff_outcome")
        self._pending = outcomes["HANDOFF_PENDING"]
        self._errno = {
            outcomes["HANDOFF_ENDED"]: 0,
            outcomes["HANDOFF_BUSY"]: errno.EBUSY,
            outcomes["HANDOFF_UNREAD"]: errno.EBUSY,
            self._pending: errno.ENOENT,  # no socket had the cookie: closed since
            outcomes["HANDOFF_UNTRACKED"]: errno.ENOENT,  # a TIME_WAIT socket's cookie
        }

    def end(
        self, cookie: int, quiet_ns: int, run: Callable[[Callable[[], None]], None]
    ) -> int | None:
        """End the connection with this cookie if it is quiet (idle in the program's view
        for `quiet_ns`, no bytes unread), under its socket's lock; `run(fn)` calls `fn` in
        the connection's network namespace. 0: ended; EBUSY: not quiet; ENOENT: gone;
        another errno: the kernel's refusal to end it. None once running the iterator
        failed (`failure` says why; logged once): the caller ends it another way."""
        if self.failure is not None:
            return None
        key = self._orders.Key(cookie)
        self._orders[key] = self._orders.Leaf(quiet_ns, self._pending)
        try:
            run(self.iterator.run)
            outcome = int(self._orders[key].outcome)
        except OSError as exc:
            self.failure = str(exc)
            log.warning(
                "hand-off: ending connections in the kernel failed (%s); "
                "through sock_diag from now on",
                exc,
            )
            return None
        finally:
            del self._orders[key]
        return self._errno.get(outcome, -outcome if outcome < 0 else errno.EPROTO)

    def close(self) -> None:
        self.iterator.close()


def load_kernel_ender(program: LoadedProgram) -> KernelEnder:
    """`load_handoff_iterator`, and the map it reads its orders from."""
    iterator = load_handoff_iterator(program)
    return KernelEnder(iterator, program.bpf[b"handoff_orders"], program.abi.header)


def load_handoff_iterator(program: LoadedProgram) -> HandOffIterator:
    """Load the iterator of `program` (compiled in with the TCP offsets) and link it."""
    from bcc import BPF  # the loader imported bcc already; late for the same reason
    from bcc.libbcc import lib

    bpf = program.bpf
    start = lib.bpf_function_start(bpf.module, ITERATOR)
    if not start:
        raise BpfUnavailable("the program was built without the hand-off iterator")
    kfunc = program.sock_destroy_id
    if kfunc is None:
        raise BpfUnavailable(f"the kernel has no {SOCK_DESTROY_KFUNC} (Linux 6.5+)")
    size = int(lib.bpf_function_size(bpf.module, ITERATOR))
    code = (ctypes.c_uint8 * size).from_address(start)
    patched = bytearray(code)
    try:
        rewrite_kfunc_call(patched, program.abi.header.const("KFUNC_PLACEHOLDER"), kfunc)
    except ValueError as exc:
        raise BpfUnavailable(f"the hand-off iterator: {exc}") from exc
    ctypes.memmove(start, bytes(patched), size)
    try:
        fn = bpf.load_func(ITERATOR, BPF.TRACING)
    except Exception as exc:  # BCC raises bare Exception
        raise BpfUnavailable(f"the kernel refused the hand-off iterator: {exc}") from exc
    lib.bcc_iter_attach.restype = ctypes.c_int
    lib.bcc_iter_attach.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint]
    lib.bcc_iter_create.restype = ctypes.c_int
    lib.bcc_iter_create.argtypes = [ctypes.c_int]
    link = int(lib.bcc_iter_attach(fn.fd, None, 0))
    if link < 0:
        err = ctypes.get_errno()
        raise BpfUnavailable(f"linking the hand-off iterator: {os.strerror(err)}")
    return HandOffIterator(link, lib)
