"""The kfunc call rewrite of the hand-off iterator (aviator.agent.bpf.iterend)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aviator.agent.bpf.iterend import rewrite_kfunc_call

PLACEHOLDER = 0x7FFF
CALL = 0x85


def insn(code: int, regs: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, regs, off, imm)


def test_the_placeholder_call_becomes_a_kfunc_call() -> None:
    code = bytearray(
        insn(0xB7, 0x01, imm=7)  # r1 = 7
        + insn(CALL, imm=1)  # map_lookup_elem: untouched
        + insn(CALL, imm=PLACEHOLDER)
        + insn(0x95)  # exit
    )
    before = bytes(code)
    rewrite_kfunc_call(code, PLACEHOLDER, 65_691)
    assert code[:16] == before[:16] and code[24:] == before[24:]
    op, regs, off, imm = struct.unpack_from("<BBhi", code, 16)
    assert (op, regs >> 4, regs & 0x0F, off, imm) == (CALL, 2, 0, 0, 65_691)


@pytest.mark.parametrize("calls", [0, 2])
def test_not_exactly_one_placeholder_call_is_refused(calls: int) -> None:
    code = bytearray(insn(CALL, imm=PLACEHOLDER) * calls + insn(0x95))
    with pytest.raises(ValueError, match=f"{calls} calls"):
        rewrite_kfunc_call(code, PLACEHOLDER, 1)


def test_a_pseudo_call_with_the_same_number_is_not_the_placeholder() -> None:
    # A call to a BPF subprogram (source register 1) whose offset happens to be it.
    code = bytearray(insn(CALL, regs=0x10, imm=PLACEHOLDER) + insn(CALL, imm=PLACEHOLDER))
    rewrite_kfunc_call(code, PLACEHOLDER, 9)
    assert code[:8] == insn(CALL, regs=0x10, imm=PLACEHOLDER)
    assert code[8:] == insn(CALL, regs=0x20, imm=9)


@given(st.binary(max_size=64).filter(lambda b: len(b) % 8 != 0))
def test_a_partial_instruction_is_refused(code: bytes) -> None:
    with pytest.raises(ValueError, match="whole number"):
        rewrite_kfunc_call(bytearray(code), PLACEHOLDER, 1)
