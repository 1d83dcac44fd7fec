"""The probe's HPACK: what it decodes matches a real encoder (the `hpack` library) in
every representation, and arbitrary bytes only ever raise HpackError."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aviator.latency.hpack import Decoder, HpackError, encode_int, huffman_decode, literal

hpack = pytest.importorskip("hpack")

names = st.sampled_from(
    [b":status", b"grpc-status", b"content-type", b"x-served-by", b"server", b"date"]
) | st.binary(min_size=1, max_size=20).map(lambda b: b.lower())
values = st.binary(max_size=40)
header_lists = st.lists(st.tuples(names, values), max_size=12)


@given(st.binary(max_size=64))
def test_huffman_decodes_what_the_library_encodes(data: bytes) -> None:
    encoded = hpack.huffman.HuffmanEncoder(
        hpack.huffman_constants.REQUEST_CODES, hpack.huffman_constants.REQUEST_CODES_LENGTH
    ).encode(data)
    assert huffman_decode(encoded) == data


@given(
    st.lists(header_lists, min_size=1, max_size=6), st.booleans(), st.sampled_from([0, 64, 4096])
)
@settings(max_examples=200)
def test_blocks_decode_as_encoded(
    blocks: list[list[tuple[bytes, bytes]]], huffman: bool, table_size: int
) -> None:
    """A connection's blocks in order: indexing, Huffman or not, evictions, size updates."""
    encoder = hpack.Encoder()
    decoder = Decoder()
    if table_size != 4096:
        encoder.header_table_size = table_size  # the next block starts with a size update
    for block in blocks:
        assert decoder.decode(encoder.encode(block, huffman=huffman)) == block


def test_never_indexed_and_literal_encoding() -> None:
    decoder = Decoder()
    block = literal(b":path", b"/grpc.health.v1.Health/Check") + literal(b"x" * 200, b"y")
    assert decoder.decode(block) == [
        (b":path", b"/grpc.health.v1.Health/Check"),
        (b"x" * 200, b"y"),
    ]
    assert hpack.Decoder().decode(block, raw=True) == decoder.decode(block)
    never = b"\x10" + encode_int(2, 7) + b"te" + encode_int(8, 7) + b"trailers"
    assert Decoder().decode(never) == [(b"te", b"trailers")]


@pytest.mark.parametrize(
    "block",
    [
        b"\x80",  # index 0
        b"\xc0",  # index 62: the dynamic table is empty
        b"\x3f\xe2\x1f",  # size update to 4097, over the allowed 4096
        b"\x00\x05ab",  # truncated string
        b"\xff\xff\xff\xff\xff\xff\x7f",  # integer too large
        b"\x00\x81\x00\x00",  # Huffman: padding of zeros
        b"\x00\x84\xff\xff\xff\xff\x00",  # Huffman: the EOS symbol
    ],
)
def test_malformed_blocks_raise(block: bytes) -> None:
    with pytest.raises(HpackError):
        Decoder().decode(block)


@given(st.lists(st.binary(max_size=80), max_size=8))
def test_arbitrary_bytes_only_raise_hpack_errors(blocks: list[bytes]) -> None:
    decoder = Decoder()
    for block in blocks:
        try:
            fields = decoder.decode(block)
        except HpackError:
            continue
        assert all(isinstance(n, bytes) and isinstance(v, bytes) for n, v in fields)
