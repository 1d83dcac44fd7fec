// SPDX-License-Identifier: GPL-2.0
//
// The kernel/user ABI of bpf/latency.bpf.c: the histogram's shape, the keys and values
// of the maps user space reads or writes, the counter indexes, the socket roles.
//
// This is the only place they are written. The BPF program includes this file; user
// space (aviator/agent/bpf/abi.py) parses it and checks the compiled maps against it,
// and aviator/latency/histogram.py is checked against the histogram constants. The
// parser is strict and knows only this subset of C (it refuses anything else):
//   #define NAME EXPR        EXPR: integers, earlier names, + - * << and parentheses
//   enum tag { NAME [= EXPR], ... };
//   struct tag { TYPE name[DIM]; ... };   TYPE: u8 u16 u32 u64 s8 s16 s32 s64 or an
//                                         earlier struct; [DIM] optional, an EXPR
// plus comments and this include guard. State private to the kernel side stays in
// latency.bpf.c.

#ifndef AVIATOR_LATENCY_H
#define AVIATOR_LATENCY_H

// Histogram: log-linear, values in microseconds (the layout of
// aviator/latency/histogram.py). v < HIST_SUB_BUCKETS -> index v; else
// e = floor(log2 v), sub = (v >> (e - HIST_SUB_BITS)) & (HIST_SUB_BUCKETS - 1),
// index = (e - HIST_SUB_BITS + 1) * HIST_SUB_BUCKETS + sub; values with
// e > HIST_MAX_EXP (2^32 us, about 71 minutes, and more) saturate into the last bucket.
#define HIST_SUB_BITS 4  // each power of two split into 2^HIST_SUB_BITS linear sub-buckets
#define HIST_SUB_BUCKETS (1 << HIST_SUB_BITS)
#define HIST_MAX_EXP 31  // the last power of two with buckets of its own
#define NUM_BUCKETS ((HIST_MAX_EXP - HIST_SUB_BITS + 2) * HIST_SUB_BUCKETS)  // 464

// Which end's socket measured a request (ep_key.role):
enum ep_role {
    ROLE_SERVER = 1,  // keyed by LOCAL ip:port: first data received -> first data sent
    ROLE_CLIENT = 2,  // keyed by REMOTE ip:port: first data sent -> first data received
    ROLE_PROBE = 3,   // keyed like ROLE_SERVER: that endpoint's requests that were the
                      //   kubelet's probes (never in its ROLE_SERVER histogram)
};

// Indexes into the per-CPU `counters` array. User space reports each one under its
// name without CNT_, lower-cased (CNT_REQUESTS_STARTED -> requests_started).
enum counter {
    CNT_RX_DATA_EVENTS,        // tcp_probe events with payload on sockets timed per connection
    CNT_TX_EVENTS,             // send events
    CNT_STATE_EVENTS,          // inet_sock_set_state events (TCP)
    CNT_DESTROY_EVENTS,        // tcp_destroy_sock events
    CNT_REQUESTS_STARTED,      // requests started
    CNT_REQUESTS_COMPLETED,    // requests completed
    CNT_REQUESTS_ABORTED,      // requests aborted (also samples: time open)
    CNT_ENDPOINTS_FULL_DROPS,  // samples dropped: endpoint map full
    CNT_SOCKETS_ADDED,         // sockets inserted into the socket map
    CNT_SOCKETS_REMOVED,       // sockets removed on close/destroy
    CNT_PAYLOAD_EVENTS,        // socket sends/receives whose bytes were looked at
    CNT_REQUESTS_CANCELLED,    // connection-level requests undone: the connection is h2
    CNT_STREAMS_STARTED,       // HTTP/2 streams opened (client HEADERS)
    CNT_STREAMS_COMPLETED,     // HTTP/2 streams answered (first response HEADERS)
    CNT_STREAMS_ABORTED,       // HTTP/2 streams reset, refused by GOAWAY or closed
    CNT_STREAMS_FULL_DROPS,    // streams not timed: the connection's stream table is full
    CNT_H2_CONNS_FULL_DROPS,   // h2 connections not parsed: the h2conns map is full
    CNT_H2_DESYNCS,            // h2 connections given up: frames beyond the per-call
                               //   budgets or bytes that are not HTTP/2 frames
    CNT_STATUSES_READ,         // response statuses read
    CNT_STATUSES_UNREAD,       // HTTP/2 responses whose status could not be read
    CNT_PROBES_BY_PATH,        // requests recorded as probes: node address, probe port+path
    CNT_PROBES_BY_ADDRESS,     // ... by node address and probe port alone (path not read)
    CNT_H2_SKIMS,              // h2 calls with more frames than the full parser's budget:
                               //   the rest skimmed (streams exact, header blocks not walked)
    NUM_COUNTERS,
};

// Slots of the `config` array, written by user space.
enum config_slot {
    // != 0 once user space has seeded `listeners`: only then are sockets first seen
    // mid-connection adopted (before, their role could be guessed wrong).
    CONFIG_ADOPTING,
    // The process id (tgid) of the agent that loaded the program: requests its
    // connections send are its keep-warm probes (ep_val.keepwarm).
    CONFIG_AGENT_TGID,
    NUM_CONFIG,
};

// What the program recognised on a connection (sock_state.proto) and which protocol
// a sample was measured with (ep_val.proto_requests index). APP_H2 and APP_GRPC
// connections are timed per stream; the others per connection.
enum app_proto {
    APP_UNKNOWN,  // no payload seen yet
    APP_OPAQUE,   // not recognised: first bytes in -> first bytes out
    APP_HTTP1,    // an HTTP/1 request line first
    APP_H2,       // the HTTP/2 client preface first (prior knowledge h2c)
    APP_GRPC,     // HTTP/2 whose responses end in trailers
    NUM_APP,
};

// Key of `endpoints`: an endpoint. IPv6 address (IPv4 stored v4-mapped), port (host
// order), role (enum ep_role). Padding is explicit and always zero so keys compare
// byte-for-byte.
struct ep_key {
    u8 addr[16];
    u16 port;
    u8 role;
    u8 pad1;
    u32 pad2;
};

// Value of `endpoints`: cumulative since the program was loaded (only `rif` goes down).
struct ep_val {
    u64 count;
    u64 sum_us;
    u64 max_us;
    s64 rif;      // requests in flight (gauge)
    u64 aborted;  // of `count`: requests open when the connection closed
    u64 statuses;  // responses whose status was read
    u64 errors;    // of `statuses`: HTTP >= 500, gRPC grpc-status != 0
    u64 keepwarm;  // of `count`: requests from the agent's own connections (keep-warm)
    u64 proto_requests[NUM_APP];  // `count` by the protocol it was measured with
    u64 buckets[NUM_BUCKETS];
};

// Value of `sockets` (key: u64, the kernel's struct sock pointer): one TCP connection
// the program saw established or adopted. User space reads it to find idle server
// connections to hand off (aviator/agent/handoff); it never writes it.
struct sock_state {
    u64 start_ns;     // 0 = idle; else the start of the open request (atomic)
    u64 idle_ns;      // when it last became idle: established, adopted, an HTTP/1 response
                      //   begun or written on, its last HTTP/2 stream closed
    struct ep_key ep;
    u8 other[16];     // the end `ep` does not name: the remote end of a server socket, the
    u16 other_port;   //   local end of a client socket (address as ep.addr, port host order)
    u16 pad1;
    u32 netns;        // inode of the socket's network namespace (as /proc/<pid>/ns/net)
    u32 requests;     // requests completed on it (approximate under concurrent completions)
    u32 path_hash;    // private: PATH_HASH of the request target read so far
    u64 flags;        // private to the program
    s64 streams;      // HTTP/2 streams open on it: from the client's HEADERS until both
                      //   ends closed the stream (END_STREAM each way), a reset, a GOAWAY
                      //   refusing it or the connection's end (not only until answered)
    u8 proto;         // enum app_proto
    u8 path_state;    // private: where the request line's reader is (enum path_state)
    u8 path_len;      // private: bytes of the target hashed so far
    u8 pad2[5];
};

// The kubelet's probes (ROLE_PROBE): a request on a server socket is one when its peer
// is one of the node's own addresses (`node_addrs`) and its request target hashes to one
// of the paths user space lists for the socket's endpoint (`probe_ports`). Where the
// target was not read (bytes moved by a path the program does not see), the address and
// the port alone decide (CNT_PROBES_BY_ADDRESS). HTTP/2 streams (the kubelet's gRPC
// probes) are decided by the address and the port alone, per connection: on an endpoint
// user space marks as gRPC-probed (probe_paths.grpc), every stream of a connection from
// a node address that is not one of the agent's own (keep-warm) is a probe (the kubelet
// opens a connection of its own per gRPC probe; the :path is not read). The hash: 32-bit FNV-1a over the
// target's bytes as sent (HTTP/1.1 request line; query included), PROBE_PATH_MAX bytes
// at most; a longer target is never a probe's.
#define PATH_HASH_OFFSET 2166136261
#define PATH_HASH_PRIME 16777619
#define PROBE_PATH_MAX 64
#define PROBE_PATHS 8
#define MAX_PROBE_PORTS 4096  // entries of `probe_ports`
#define MAX_NODE_ADDRS 256    // entries of `node_addrs`

enum path_state {
    PATH_IDLE,    // the next client bytes start a request line
    PATH_METHOD,  // in the method token
    PATH_TARGET,  // in the request target (hashed)
    PATH_DONE,    // the target was read (or cannot be: too long) for this request
};

// Key of `probe_ports`: an endpoint the kubelet probes (address as ep_key.addr, port
// host order). Written by user space.
struct probe_key {
    u8 addr[16];
    u16 port;
    u16 pad1;
    u32 pad2;
};

// Value of `probe_ports`: the hashes of its probes' paths.
struct probe_paths {
    u32 hashes[PROBE_PATHS];
    u32 count;  // of `hashes` in use
    u32 grpc;   // != 0: the kubelet's gRPC probes reach it (HTTP/2 streams, by address)
};

// Key of `node_addrs` (value: u8, 1): one of the node's own addresses (as ep_key.addr).
// Written by user space.
struct addr_key {
    u8 addr[16];
};

// The agent's own connections (map `agent_conns`, key: struct probe_key, their local
// address and port; value: u8, 1): inserted when the agent's process (CONFIG_AGENT_TGID)
// sends on a client socket, so the server socket whose peer that is counts its
// requests in ep_val.keepwarm. An LRU of MAX_AGENT_CONNS.
#define MAX_AGENT_CONNS 1024

// HTTP/2 connections (map `h2conns`, key: the struct sock pointer like `sockets`): the
// frame parser's state per direction and the connection's open streams. A stream
// lives in slot ((id >> 1) + i) % H2_SLOTS for the first free i < H2_PROBES, so the
// ids of up to H2_SLOTS streams opened one after another never collide; it holds its
// slot until the stream is closed (sock_state.streams).
#define H2_SLOTS 256
#define H2_PROBES 16

// Private to the program: where the parser is in one direction's byte stream.
struct h2_dir {
    u32 skip;      // bytes of the current frame's payload (or the preface) still to come
    u8 have;       // bytes of a frame header split across reads, kept in part[]
    u8 pad1[3];
    u8 part[32];
};

struct h2_slot {
    u64 sid;       // stream id in the low 32 bits, 0 = free; the bits above are the
                   //   program's (which ends closed the stream)
    u64 start_ns;  // when its client HEADERS was read or written (CLOCK_MONOTONIC);
                   //   0 once answered (the request is over, the stream may not be)
};

// Private to the program (bpf/hpack.h): the server's HPACK encoder as far as statuses
// need it. A dynamic table entry the server added is remembered by its insertion
// number when it holds a status, a grpc-status or a content-type (the last
// HPACK_RECS of them); index 62 + k names the entry inserted k insertions before
// the latest, so counting insertions resolves references without eviction arithmetic.
#define HPACK_RECS 16
#define HPACK_CAP 16

struct hpack_rec {
    u32 seq;       // insertion number + 1; 0 = empty
    u16 value;     // :status; grpc-status + 1; content-type: 1 if application/grpc
    u8 kind;
    u8 pad;
};

// A header block the walk read whole (one HEADERS frame of at most 8 bytes that added
// nothing to the dynamic table) and what it read: the same bytes later, with no
// insertion between, read the same (a block the parser skims is read from here).
struct hpack_memo {
    u64 word;      // its bytes, little-endian (zero past len)
    u32 inserted;  // hpack_state.inserted when it was read
    u16 status;    // what it read: blk_status, blk_grpc, blk_ctype
    u8 grpc;
    u8 ctype;
    u8 len;        // 0: empty
    u8 pad[7];
};

struct hpack_state {
    u32 inserted;    // entries the server's encoder added to its dynamic table
    u32 forgot;      // records overwritten: a miss below this insertion number is unknown
    u32 frame_left;  // payload bytes of the current header-carrying frame still to come
    u32 str_left;    // bytes of the current string still to come
    u32 str_len;     // its length
    u32 ival;        // an integer being read across bytes
    u32 pending;     // a dynamic table index to resolve (0: none)
    u16 blk_status;  // the block's :status (0: none read)
    u8 blk_grpc;     // its grpc-status + 1 (0: none read)
    u8 blk_ctype;    // it has content-type application/grpc
    u8 state;        // what the next byte is (HP_* in hpack.h)
    u8 int_for;      // what the integer being read is
    u8 shift;
    u8 rep;          // the current field's representation
    u8 kind;         // what the current field's name is
    u8 huff;         // the current string is Huffman-coded
    u8 in_name;      // the current string is a name
    u8 cap_len;      // bytes of the current string kept in cap[]
    u8 capture;      // how many to keep
    u8 pre;          // bytes before the block in this frame still to skip
    u8 pad_len;      // padding at the end of this frame
    u8 need_pad;     // its pad length byte is still to come
    u8 end_headers;  // this frame ends the block
    u8 role;         // what the block is for the counts (HPB_* in hpack.h)
    u8 pending_for;  // what `pending` is (an indexed field or a literal's name)
    u8 next_rec;
    u8 broken;       // insertions no longer counted: dynamic references are unknown
    u8 blk_len;      // bytes of the block in blk_word (0: it may not be remembered)
    u8 blk_lost;     // the block refers to an entry not known (KIND_LOST)
    u8 pad1;
    u8 cap[HPACK_CAP];
    struct hpack_rec recs[HPACK_RECS];
    u32 pad2;
    u64 blk_word;    // the block being walked, when it is short (struct hpack_memo)
    struct hpack_memo memo[2];  // the last such response block [0] and trailers [1]
};

// Bits of h2_conn.server_cut: the server's bytes so far stop inside something no other
// bytes may split. Hand-off (aviator/agent/handoff/drain.py) writes a GOAWAY frame
// for the server only while none is set.
enum h2_cut {
    H2_CUT_FRAME = 1,  // inside a frame: its header or payload is not all written yet
    H2_CUT_BLOCK = 2,  // inside a header block: a HEADERS or PUSH_PROMISE (or
                       //   CONTINUATION) without END_HEADERS was the server's last frame
};

struct h2_conn {
    struct h2_dir dir[2];  // 0: the client's bytes (requests), 1: the server's
    u32 max_sid;           // highest client stream id opened (ids only grow)
    u32 goaway_sid;        // last-stream-id of a server GOAWAY still to apply; else 0
    u32 server_cut;        // enum h2_cut bits, as of the server's last parsed write
    u32 pad1;
    u64 flags;             // private to the program
    // For the peer's FIN (h2_streams.h): the socket's sequence number after the last
    // server bytes parsed (write_seq on the server's socket, copied_seq on a client's),
    // and 1 once the FIN came.
    u32 seen;
    u32 peer_fin;
    struct hpack_state hp; // the server's header blocks (statuses)
    struct h2_slot slots[H2_SLOTS];
};

// Key of `listeners` (value: u8, 1): a listening address:port, [::] and 0.0.0.0
// (v4-mapped) for wildcards; seeded by user space, then tracked by the program.
struct listen_key {
    u8 addr[16];
    u16 port;
    u16 pad1;
    u32 pad2;
};

// Value of `handoff_orders` (key: u64, a socket's cookie; written by user space): end
// that connection from inside the kernel if it is quiet (bpf/handoff.h). User space
// sets `outcome` to HANDOFF_PENDING, runs the iterator in the socket's network
// namespace, and reads the outcome back.
struct handoff_order {
    u64 quiet_ns;  // ended only if idle at least this long in the program's view
    s64 outcome;   // enum handoff_outcome, or bpf_sock_destroy's negative errno
};

enum handoff_outcome {
    HANDOFF_PENDING,    // no socket of the iteration had the cookie (gone, or elsewhere)
    HANDOFF_ENDED,      // reset under its lock: the peer sees a reset or EOF
    HANDOFF_BUSY,       // a request or stream open, or idle for less than quiet_ns
    HANDOFF_UNREAD,     // bytes received that the application has not read
    HANDOFF_UNTRACKED,  // not in `sockets`: the program does not know its state
};

#define MAX_HANDOFF_ORDERS 256

// BCC cannot compile a call to a kfunc: the iterator calls this helper number instead,
// and the loader rewrites that one call into a call of the kfunc bpf_sock_destroy
// (aviator/agent/bpf/iterend.py).
#define KFUNC_PLACEHOLDER 0x7fff

#endif
