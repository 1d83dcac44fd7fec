"""A graceful HTTP/2 GOAWAY for a pod's busy connection, and when one may be written (pure).

An HTTP/2 (or gRPC) connection that always has a stream open is never idle, so ending
it idle-only never happens. Servers move such a connection without failing a call the
way gRPC's max-connection-age and Go's and Envoy's graceful drains do: one GOAWAY frame
with last-stream-id 2^31-1 and NO_ERROR. The client opens no new stream on it, finishes
the open ones and closes it, and its next call dials again (through kube-proxy: onto the
routed pods). Hand-off writes that frame for the pod's server (`drain.py`).

The frame goes into the server's own byte stream, so it must land between two of the
server's frames, never inside one (nor inside a header block, which must be contiguous
on the connection). `refusal` says why it may not be written now, from:

- what the program recognised on the connection: h2c or gRPC only (TLS, HTTP/1 and
  unrecognised bytes are never written to);
- where the server's bytes stop as the program parsed them (`h2_conn.server_cut`,
  bpf/latency.h; None when it parses no HTTP/2 on the connection), read before and
  after the send queue: both reads must be 0 (between frames, outside a header block);
- the socket's upper-layer protocol (TCP_ULP: "tls" is kernel TLS, whose plaintext
  the program reads like h2c): none;
- the bytes the server wrote that the peer has not acknowledged yet (SIOCOUTQ): none,
  so no write of the server is still being copied in or waiting for room.

`TRANSIENT` refusals are retried at the next look; the others never change.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

LAST_STREAM_ID = 0x7FFFFFFF  # "every stream you opened may still complete"
NO_ERROR = 0
_GOAWAY = 0x7

NOT_H2, UNPARSED, ULP, MID_FRAME, SEND_QUEUE = "not-h2", "unparsed", "ulp", "mid-frame", "queued"
TRANSIENT = frozenset({MID_FRAME, SEND_QUEUE})


def frame(last_stream_id: int = LAST_STREAM_ID, error: int = NO_ERROR) -> bytes:
    """A GOAWAY frame (RFC 9113 §6.8): 9-byte header (length 8, type 7, no flags,
    stream 0), then the last stream id and the error code."""
    header = struct.pack("!I", 8)[1:] + bytes([_GOAWAY, 0]) + struct.pack("!I", 0)
    return header + struct.pack("!II", last_stream_id & 0x7FFFFFFF, error)


GRACEFUL = frame()  # 17 bytes


def refusal(
    *, protocol: str | None, server_cuts: Sequence[int | None], ulp: bytes, outq: int
) -> str | None:
    """Why the GOAWAY may not be written now (None: it may); see the module docstring."""
    if protocol not in ("h2", "grpc"):
        return NOT_H2
    if not server_cuts or any(c is None for c in server_cuts):
        return UNPARSED
    if ulp.strip(b"\0"):
        return ULP
    if any(server_cuts):
        return MID_FRAME
    if outq:
        return SEND_QUEUE
    return None
