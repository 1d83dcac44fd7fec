"""The HPACK (RFC 7541) a probe needs: one field encoded, header blocks decoded (pure).

Encoding: every field a probe sends is a literal without indexing and without Huffman
coding (`literal`), so the client keeps no encoder state and the peer's table is never
touched.

Decoding (`Decoder.decode`): the whole of RFC 7541 that a server may use: indexed
fields (static and dynamic table), literals with and without indexing, never indexed,
dynamic table size updates (bounded by the size the client allowed), integers and
Huffman-coded strings (the code is canonical, so the table is the code lengths of the
257 symbols, Appendix B). Malformed input raises `HpackError`; no input makes it loop
or allocate more than the block's size times a constant.
"""

from __future__ import annotations

from collections import deque

Field = tuple[bytes, bytes]

DEFAULT_TABLE_SIZE = 4096


class HpackError(ValueError):
    """A header block that is not valid HPACK."""


_STATIC: tuple[Field, ...] = tuple(
    (name.encode(), value.encode())
    for name, value in (
        (":authority", ""),
        (":method", "GET"),
        (":method", "POST"),
        (":path", "/"),
        (":path", "/index.html"),
        (":scheme", "http"),
        (":scheme", "https"),
        (":status", "200"),
        (":status", "204"),
        (":status", "206"),
        (":status", "304"),
        (":status", "400"),
        (":status", "404"),
        (":status", "500"),
        ("accept-charset", ""),
        ("accept-encoding", "gzip, deflate"),
        ("accept-language", ""),
        ("accept-ranges", ""),
        ("accept", ""),
        ("access-control-allow-origin", ""),
        ("age", ""),
        ("allow", ""),
        ("authorization", ""),
        ("cache-control", ""),
        ("content-disposition", ""),
        ("content-encoding", ""),
        ("content-language", ""),
        ("content-length", ""),
        ("content-location", ""),
        ("content-range", ""),
        ("content-type", ""),
        ("cookie", ""),
        ("date", ""),
        ("etag", ""),
        ("expect", ""),
        ("expires", ""),
        ("from", ""),
        ("host", ""),
        ("if-match", ""),
        ("if-modified-since", ""),
        ("if-none-match", ""),
        ("if-range", ""),
        ("if-unmodified-since", ""),
        ("last-modified", ""),
        ("link", ""),
        ("location", ""),
        ("max-forwards", ""),
        ("proxy-authenticate", ""),
        ("proxy-authorization", ""),
        ("range", ""),
        ("referer", ""),
        ("refresh", ""),
        ("retry-after", ""),
        ("server", ""),
        ("set-cookie", ""),
        ("strict-transport-security", ""),
        ("transfer-encoding", ""),
        ("user-agent", ""),
        ("vary", ""),
        ("via", ""),
        ("www-authenticate", ""),
    )
)

# Appendix B's code lengths of symbols 0..256 (256: EOS), as chr(48 + length).
_HUFFMAN_LENGTHS = (
    "=GLLLLLLLHNLLNLLLLLLLLNLLLLLLLLL6::<=68;::8;8666555666666678?6<:=67777777777777777777"
    "777878=C=>6?56565666577666567655677777?;>=LDFDDFFFGFGGGGGHGHHFGHGGGGEFGFGGHFEDFFGGEGF"
    "FHEFGGEEFEGFGGDFFFGFFGJJDCFGFIJJJKKJHICEJKKJKHEEJJLKKKDHDEFEEGFFIIHHJGJKJJKKKKKLKKKKKJN"
)


def _huffman_codes() -> dict[tuple[int, int], int]:
    """(length, code) -> symbol, built canonically from the lengths."""
    lengths = [ord(c) - 48 for c in _HUFFMAN_LENGTHS]
    codes: dict[tuple[int, int], int] = {}
    code = 0
    prev = 0
    for sym in sorted(range(257), key=lambda s: (lengths[s], s)):
        code <<= lengths[sym] - prev
        prev = lengths[sym]
        codes[(prev, code)] = sym
        code += 1
    return codes


_CODES = _huffman_codes()
_EOS = 256


def huffman_decode(data: bytes) -> bytes:
    """Decode a Huffman-coded string; padding must be < 8 bits of ones (RFC 7541 5.2)."""
    out = bytearray()
    code = 0
    length = 0
    for byte in data:
        for shift in range(7, -1, -1):
            code = (code << 1) | ((byte >> shift) & 1)
            length += 1
            sym = _CODES.get((length, code))
            if sym is not None:
                if sym == _EOS:
                    raise HpackError("EOS symbol in a Huffman string")
                out.append(sym)
                code = 0
                length = 0
            elif length > 30:
                raise HpackError("invalid Huffman code")
    if length > 7 or code != (1 << length) - 1:
        raise HpackError("invalid Huffman padding")
    return bytes(out)


def encode_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    """An integer with an N-bit prefix; `first` holds the first byte's other bits."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = bytearray([first | limit])
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def literal(name: bytes, value: bytes) -> bytes:
    """One field as a literal without indexing, new name, no Huffman coding."""
    return b"\x00" + encode_int(len(name), 7) + name + encode_int(len(value), 7) + value


class Decoder:
    """Decodes a connection's header blocks in order (the dynamic table carries)."""

    def __init__(self, max_table_size: int = DEFAULT_TABLE_SIZE) -> None:
        self.max_table_size = max_table_size  # what the client allowed (SETTINGS)
        self.table_size = max_table_size  # what the encoder chose, <= the above
        self._table: deque[Field] = deque()
        self._used = 0

    def decode(self, block: bytes) -> list[Field]:
        fields: list[Field] = []
        pos = 0
        while pos < len(block):
            byte = block[pos]
            if byte & 0x80:  # indexed field
                index, pos = self._int(block, pos, 7)
                fields.append(self._entry(index))
            elif byte & 0x40:  # literal with incremental indexing
                field, pos = self._literal(block, pos, 6)
                fields.append(field)
                self._add(field)
            elif byte & 0x20:  # dynamic table size update
                size, pos = self._int(block, pos, 5)
                if size > self.max_table_size:
                    raise HpackError(f"table size {size} over the allowed {self.max_table_size}")
                self.table_size = size
                self._evict(0)
            else:  # literal without indexing (0000) or never indexed (0001)
                field, pos = self._literal(block, pos, 4)
                fields.append(field)
        return fields

    @staticmethod
    def _int(data: bytes, pos: int, prefix_bits: int) -> tuple[int, int]:
        limit = (1 << prefix_bits) - 1
        value = data[pos] & limit
        pos += 1
        if value < limit:
            return value, pos
        shift = 0
        while True:
            if pos >= len(data):
                raise HpackError("truncated integer")
            byte = data[pos]
            pos += 1
            value += (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value, pos
            if shift > 28:
                raise HpackError("integer too large")

    def _string(self, data: bytes, pos: int) -> tuple[bytes, int]:
        if pos >= len(data):
            raise HpackError("truncated string")
        huffman = bool(data[pos] & 0x80)
        length, pos = self._int(data, pos, 7)
        if pos + length > len(data):
            raise HpackError("truncated string")
        raw = data[pos : pos + length]
        return (huffman_decode(raw) if huffman else raw), pos + length

    def _literal(self, data: bytes, pos: int, prefix_bits: int) -> tuple[Field, int]:
        index, pos = self._int(data, pos, prefix_bits)
        if index:
            name = self._entry(index)[0]
        else:
            name, pos = self._string(data, pos)
        value, pos = self._string(data, pos)
        return (name, value), pos

    def _entry(self, index: int) -> Field:
        if 1 <= index <= len(_STATIC):
            return _STATIC[index - 1]
        dynamic = index - len(_STATIC) - 1
        if 0 <= dynamic < len(self._table):
            return self._table[dynamic]
        raise HpackError(f"index {index} not in the tables")

    def _add(self, field: Field) -> None:
        size = len(field[0]) + len(field[1]) + 32
        self._evict(size)
        if size <= self.table_size:
            self._table.appendleft(field)
            self._used += size

    def _evict(self, room: int) -> None:
        while self._table and self._used + room > self.table_size:
            name, value = self._table.pop()
            self._used -= len(name) + len(value) + 32
