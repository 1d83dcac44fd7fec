// SPDX-License-Identifier: GPL-2.0
//
// HTTP/2 (h2c) per stream, from the frame headers in the bytes an application hands
// to or takes from a TCP socket (the syscall boundary; payload.h finds the bytes).
//
// A request is a stream: the client's HEADERS opening it (ids only grow, so a HEADERS
// with an id at or below the highest opened one is trailers, not a new stream) -> the
// server's first HEADERS on it. RST_STREAM (either side), a server GOAWAY (streams
// above its last-stream-id) and the end of the connection abort it: an aborted stream
// is a sample of its time open, counted in `aborted`, like an HTTP/1 request.
//
// The parser carries its place per direction across calls (h2_dir: payload bytes to
// skip, a frame header split across reads, a status whose bytes are still to come). A
// program run takes H2_FRAMES_PER_RUN steps (a frame header, a payload skipped, or a
// move to the next iovec of a readv/writev/recvmsg/sendmsg); a call with more
// continues in a tail call of h2_parse_more, up to H2_MAX_RUNS runs (512 steps per
// call: 100 small frames in one write fit). Beyond that, or on bytes that cannot be
// HTTP/2 frames (something moved bytes through a path the program does not see), the
// connection is given up: its open streams are dropped without samples, it is flagged
// SOCK_UNPARSED and is not measured any more (CNT_H2_DESYNCS counts these).
//
// Open streams live in the connection's own table (struct h2_conn in latency.h), not
// in one map keyed (socket, stream): closing a connection or a GOAWAY walks its
// H2_SLOTS slots, with no map-wide iteration and no orphan left behind, and the table
// is exact for up to H2_SLOTS streams opened one after another (ids map to
// consecutive slots). A stream that finds no free slot among its H2_PROBES is not
// timed (CNT_STREAMS_FULL_DROPS).
//
// Status (counted with the endpoint's `statuses`/`errors`), from the first bytes of
// the header block when they are in the same read or write as the frame header:
//   :status  static-table indexed 0x88-0x8e (200 204 206 304 400 404 500), or a
//            literal with static name index 8-14 (with, without or never indexing)
//            and a 3-digit value, plain or Huffman-coded. A status the encoder took
//            from its dynamic table (a repeated status outside the static table) is
//            not readable without a full HPACK decoder and is not counted.
//   grpc-status  a literal with a new name (plain or Huffman "grpc-status"), 1-2
//            digits, where it is the trailers' first field, or, in a response that
//            is only headers (gRPC Trailers-Only: an error without a message), the
//            field after an indexed :status and a content-type that is indexed or
//            the literal "application/grpc". Encoders send a value as such a
//            literal the first time on a connection and refer to their dynamic
//            table after: those are not readable. The field must be in the same
//            buffer (or iovec) as the start of the block: a writer that gathers
//            header fields from iovecs of their own (gRPC C-core's server) is read on
//            its peer's side only. A value != 0 counts one more error
//            (its response's :status was counted).
// An h2 connection whose responses end in trailers (a second server HEADERS with
// END_STREAM) is gRPC from then on (APP_GRPC).

#define H2_DATA 0
#define H2_HEADERS 1
#define H2_PRIORITY_FRAME 2
#define H2_RST_STREAM 3
#define H2_SETTINGS 4
#define H2_PING 6
#define H2_GOAWAY 7
#define H2_WINDOW_UPDATE 8
#define H2_CONTINUATION 9

#define H2_END_STREAM 0x1
#define H2_PADDED 0x8
#define H2_PRIORITY 0x20

#define H2_PREFACE_LEN 24
#define H2_FRAMES_PER_RUN 16
#define H2_MAX_RUNS 32
#define H2_MAX_IOV 1024  // UIO_MAXIOV: every iovec is a step of the run budget
#define H2_PEEK 32

#define H2C_GOAWAY 1  // h2_conn.flags: goaway_sid is to be applied

#if !defined(MAX_H2_CONNS)
#error "MAX_H2_CONNS must be defined (-D)"
#endif

BPF_F_TABLE("hash", u64, struct h2_conn, h2conns, MAX_H2_CONNS, BPF_F_NO_PREALLOC);
BPF_PERCPU_ARRAY(zero_h2, struct h2_conn, 1);

// Where one call's bytes are: the current chunk (a buffer or one iovec), what is left.
// Per CPU: tracepoint programs do not nest on a CPU, and a tail call keeps the CPU.
struct h2_cursor {
    u64 sk;
    u64 cur;       // user address of the current chunk
    u64 iov;       // user address of the iovec array; 0: one plain buffer
    u64 now;       // the clock, read at most once per call
    u32 cur_len;
    u32 pos;       // bytes of the chunk consumed
    u32 left;      // bytes of the call not in a chunk yet
    u32 iov_i;
    u32 iovcnt;
    u8 dir;        // 0: the client's bytes, 1: the server's
    u8 active;
    u8 runs;
    u8 pad;
};
BPF_PERCPU_ARRAY(h2_cursors, struct h2_cursor, 1);
BPF_PROG_ARRAY(h2_progs, 2);  // H2_PROG_PARSE, H2_PROG_SWEEP

static __always_inline u64 cursor_now(struct h2_cursor *c) {
    if (c->now == 0)
        c->now = bpf_ktime_get_ns();
    return c->now;
}

static __always_inline struct h2_conn *h2_conn_create(u64 sk) {
    struct h2_conn *h = h2conns.lookup(&sk);
    if (h)
        return h;
    int zero = 0;
    struct h2_conn *z = zero_h2.lookup(&zero);
    if (!z)
        return 0;
    h2conns.update(&sk, z);
    h = h2conns.lookup(&sk);
    if (!h)
        count(CNT_H2_CONNS_FULL_DROPS);
    return h;
}

static __always_inline void count_status(struct ep_val *v, u32 status, int grpc) {
    if (!v)
        return;
    __sync_fetch_and_add(&v->statuses, 1);
    if (grpc ? status != 0 : status >= 500)
        __sync_fetch_and_add(&v->errors, 1);
    count(CNT_STATUSES_READ);
}

static __always_inline void finish_stream(struct sock_state *st, struct ep_val *v,
                                          u64 start, u64 now, int aborted) {
    __sync_fetch_and_add(&st->streams, -1);
    if (!aborted) {
        st->idle_ns = now;
        st->requests += 1;
    }
    count(aborted ? CNT_STREAMS_ABORTED : CNT_STREAMS_COMPLETED);
    if (!v)
        return;
    if (aborted)
        __sync_fetch_and_add(&v->aborted, 1);
    __sync_fetch_and_add(&v->rif, -1);
    record_sample(v, now > start ? (now - start) / 1000 : 0, st->proto);
}

// `v`: the socket's endpoint, looked up once per run (0 if the map is full).
static __always_inline void stream_open(struct h2_cursor *c, struct sock_state *st,
                                        struct ep_val *v, struct h2_conn *h, u32 sid) {
    u32 home = sid >> 1;
    for (int i = 0; i < H2_PROBES; i++) {
        struct h2_slot *s = &h->slots[(home + i) & (H2_SLOTS - 1)];
        if (LOAD_ONCE(s->sid) != 0)
            continue;
        if (__sync_val_compare_and_swap(&s->sid, 0, (u64)sid) != 0)
            continue;
        s->start_ns = cursor_now(c);
        __sync_fetch_and_add(&st->streams, 1);
        count(CNT_STREAMS_STARTED);
        if (v)
            __sync_fetch_and_add(&v->rif, 1);
        return;
    }
    count(CNT_STREAMS_FULL_DROPS);
}

// Ends stream `sid` if it is open; 1 if it was.
static __always_inline int stream_end(struct h2_cursor *c, struct sock_state *st,
                                      struct ep_val *v, struct h2_conn *h, u32 sid,
                                      int aborted) {
    u32 home = sid >> 1;
    for (int i = 0; i < H2_PROBES; i++) {
        struct h2_slot *s = &h->slots[(home + i) & (H2_SLOTS - 1)];
        if (LOAD_ONCE(s->sid) != sid)
            continue;
        u64 start = __sync_lock_test_and_set(&s->start_ns, 0);
        if (start == 0)
            return 0;  // another CPU ended it
        s->sid = 0;
        finish_stream(st, v, start, cursor_now(c), aborted);
        return 1;
    }
    return 0;
}

// Ending many streams at once (connection end, GOAWAY, giving up) is a sweep of the
// connection's slots in a program of its own, H2_SWEEP_SLOTS slots per run, continued
// by tail calls: a loop over all H2_SLOTS, each with a sample to record, is more than
// the verifier explores in one program. The sweep needs no `sockets` entry (it may be
// gone): the endpoint and protocol travel with it.
#define H2_SWEEP_SLOTS 16
#define H2_PROG_PARSE 0
#define H2_PROG_SWEEP 1

struct h2_sweep {
    u64 sk;
    struct ep_key ep;
    u64 now;
    u32 above;   // streams with ids above this end (0: all)
    u32 next;    // next slot
    u8 sample;   // 1: each is an aborted sample; 0: dropped (the parser lost its place)
    u8 remove;   // delete the connection's state at the end
    u8 proto;
    u8 active;
    u32 pad;
};
BPF_PERCPU_ARRAY(h2_sweeps, struct h2_sweep, 1);

// Starts a sweep; does not return when the tail call succeeds, so callers make it
// their last step.
static __always_inline void sweep_start(void *ctx, u64 sk, struct sock_state *st, u32 above,
                                        u64 now, int sample, int remove) {
    int zero = 0;
    struct h2_sweep *w = h2_sweeps.lookup(&zero);
    if (!w)
        return;
    w->sk = sk;
    __builtin_memcpy(&w->ep, &st->ep, sizeof(w->ep));
    w->now = now;
    w->above = above;
    w->next = 0;
    w->sample = sample;
    w->remove = remove;
    w->proto = st->proto;
    w->active = 1;
    h2_progs.call(ctx, H2_PROG_SWEEP);
    w->active = 0;
}

static __always_inline int h2_sweep_run(void *ctx) {
    int zero = 0;
    struct h2_sweep *w = h2_sweeps.lookup(&zero);
    if (!w || !w->active)
        return 0;
    u64 sk = w->sk;
    struct h2_conn *h = h2conns.lookup(&sk);
    if (!h) {
        w->active = 0;
        return 0;
    }
    struct sock_state *st = sockets.lookup(&sk);
    struct ep_val *v = endpoint(&w->ep);
    u32 first = w->next;
    for (int i = 0; i < H2_SWEEP_SLOTS; i++) {
        u32 idx = first + i;
        if (idx >= H2_SLOTS)
            break;
        struct h2_slot *s = &h->slots[BOUNDED(idx, H2_SLOTS - 1)];
        u64 sid = LOAD_ONCE(s->sid);
        if (sid == 0 || sid <= w->above)
            continue;
        u64 start = __sync_lock_test_and_set(&s->start_ns, 0);
        if (start == 0)
            continue;
        s->sid = 0;
        if (st)
            __sync_fetch_and_add(&st->streams, -1);
        count(w->sample ? CNT_STREAMS_ABORTED : CNT_REQUESTS_CANCELLED);
        if (!v)
            continue;
        __sync_fetch_and_add(&v->rif, -1);
        if (w->sample) {
            __sync_fetch_and_add(&v->aborted, 1);
            record_sample(v, w->now > start ? (w->now - start) / 1000 : 0, w->proto);
        }
    }
    w->next = first + H2_SWEEP_SLOTS;
    if (w->next < H2_SLOTS)
        h2_progs.call(ctx, H2_PROG_SWEEP);
    w->active = 0;
    if (w->remove)
        h2conns.delete(&sk);
    return 0;
}

int h2_sweep_more(void *ctx) {
    return h2_sweep_run(ctx);
}

// The connection ends: its open streams are aborted, its parser state goes. Last step
// of the caller (a tail call).
static __always_inline void h2_close(void *ctx, u64 sk, struct sock_state *st) {
    if (st->proto == APP_HTTP1 || st->proto == APP_OPAQUE)
        return;
    if (!h2conns.lookup(&sk))
        return;
    if (LOAD_ONCE(st->streams) != 0)
        sweep_start(ctx, sk, st, 0, bpf_ktime_get_ns(), 1, 1);
    h2conns.delete(&sk);
}

// The parser lost its place: the connection is not measured any more. Last step.
static __always_inline void h2_give_up(void *ctx, u64 sk, struct sock_state *st) {
    __sync_fetch_and_or(&st->flags, SOCK_UNPARSED);
    count(CNT_H2_DESYNCS);
    sweep_start(ctx, sk, st, 0, 0, 0, 1);
    h2conns.delete(&sk);
}

// Frames with a fixed shape the spec requires; anything else here is not HTTP/2
// (extension frame types pass).
static __always_inline int h2_plausible(u32 len, u8 type, u32 sid) {
    // if-chains, not a switch: clang would make a jump table, which BPF has not.
    if (type == H2_DATA || type == H2_HEADERS || type == H2_CONTINUATION)
        return sid != 0;
    if (type == H2_PRIORITY_FRAME)
        return sid != 0 && len == 5;
    if (type == H2_RST_STREAM)
        return sid != 0 && len == 4;
    if (type == H2_SETTINGS)
        return sid == 0 && len % 6 == 0;
    if (type == H2_PING)
        return sid == 0 && len == 8;
    if (type == H2_GOAWAY)
        return sid == 0 && len >= 8;
    if (type == H2_WINDOW_UPDATE)
        return len == 4;
    return 1;
}

// The first bytes of a HEADERS frame's header block that are in this chunk (after the
// pad length and priority fields, and one dynamic table size update) into b, at fixed
// places (the decoders below index b with constants only: cheap for the verifier);
// how many (0: none here). `*at`: where they start in the chunk, from c->pos.
static __always_inline u32 peek_block(struct h2_cursor *c, u8 flags, u8 *b, u32 *at) {
    u32 avail = c->cur_len - c->pos;
    u32 o = 0;
    if (flags & H2_PADDED)
        o += 1;
    if (flags & H2_PRIORITY)
        o += 5;
    if (avail <= o)
        return 0;
    u32 n = avail - o;
    if (n > H2_PEEK - 1)
        n = H2_PEEK - 1;
    if (bpf_probe_read_user(b, BOUNDED(n, H2_PEEK - 1), (const void *)(c->cur + c->pos + o)))
        return 0;
    *at = o;
    if ((b[0] & 0xe0) != 0x20)
        return n;
    // A dynamic table size update (5-bit prefix, then varint bytes) comes first.
    u32 skip = 1;
    if ((b[0] & 0x1f) == 0x1f) {
        skip = 2;
        if (b[1] & 0x80) {
            skip = 3;
            if (b[2] & 0x80) {
                skip = 4;
                if (b[3] & 0x80)
                    return 0;
            }
        }
    }
    o += skip;
    if (avail <= o)
        return 0;
    n = avail - o;
    if (n > H2_PEEK - 1)
        n = H2_PEEK - 1;
    if (bpf_probe_read_user(b, BOUNDED(n, H2_PEEK - 1), (const void *)(c->cur + c->pos + o)))
        return 0;
    *at = o;
    return n;
}

#define BAD_DIGITS 0xffffffff

// `ndigits` digits Huffman-coded (HPACK: '0'-'2' 5-bit codes 0-2, '3'-'9' 6-bit
// 0x19-0x1f) from the top of the 24 bits `v`; BAD_DIGITS if they are not digits.
static __always_inline u32 huffman_digits(u32 v, u32 ndigits) {
    u32 bit = 24;
    u32 out = 0;
    for (int k = 0; k < 3; k++) {
        if (k >= ndigits)
            break;
        u32 five = (v >> (bit - 5)) & 0x1f;
        if (five <= 2) {
            out = out * 10 + five;
            bit -= 5;
            continue;
        }
        u32 six = (v >> (bit - 6)) & 0x3f;
        if (six < 0x19 || six > 0x1f)
            return BAD_DIGITS;
        out = out * 10 + (six - 0x19 + 3);
        bit -= 6;
    }
    return out;
}

static __always_inline u32 digit(u8 ch) {
    return (ch >= '0' && ch <= '9') ? (u32)(ch - '0') : 100;
}

// :status as the first field of a response header block (0: unreadable).
static __always_inline u32 h2_status(const u8 *b, u32 n) {
    u8 b0 = b[0];
    if (b0 >= 0x88 && b0 <= 0x8e) {  // static table entries 8-14
        if (b0 == 0x88)
            return 200;
        if (b0 == 0x89)
            return 204;
        if (b0 == 0x8a)
            return 206;
        if (b0 == 0x8b)
            return 304;
        if (b0 == 0x8c)
            return 400;
        if (b0 == 0x8d)
            return 404;
        return 500;
    }
    u8 idx = 0;
    if ((b0 & 0xc0) == 0x40)
        idx = b0 & 0x3f;  // literal with incremental indexing, 6-bit index
    else if ((b0 & 0xe0) == 0x00)
        idx = b0 & 0x0f;  // without indexing (0000) or never indexed (0001), 4-bit index
    if (idx < 8 || idx > 14 || n < 4)
        return 0;
    u8 l = b[1];
    u32 v = BAD_DIGITS;
    if (l == 3 && n >= 5) {
        u32 d = digit(b[2]) * 100 + digit(b[3]) * 10 + digit(b[4]);
        v = d < 1000 ? d : BAD_DIGITS;
    } else if (l == 0x82) {
        v = huffman_digits(((u32)b[2] << 16) | ((u32)b[3] << 8), 3);
    } else if (l == 0x83 && n >= 5) {
        v = huffman_digits(((u32)b[2] << 16) | ((u32)b[3] << 8) | b[4], 3);
    }
    return (v >= 100 && v <= 599) ? v : 0;
}

// "grpc-status" as HPACK strings: plain (length 11) and Huffman (length 8), as
// little-endian words.
#define GRPC_NAME_PLAIN_0 0x746174732d637072ULL  // "rpc-stat" at b[3]
#define GRPC_NAME_HUFF 0x8fda3412b2c8ca9aULL     // 9a ca c8 b2 12 34 da 8f at b[2]

static __always_inline u64 word_at(const u8 *p) {
    u64 w;
    __builtin_memcpy(&w, p, 8);
    return w;
}

// A grpc-status value (1 or 2 digits, plain or Huffman) whose length byte is b[0].
static __always_inline s32 grpc_value(const u8 *b) {
    u8 l = b[0];
    u32 v = BAD_DIGITS;
    if (l == 1)
        v = digit(b[1]);
    else if (l == 2)
        v = digit(b[1]) * 10 + digit(b[2]);
    else if (l == 0x81)
        v = huffman_digits((u32)b[1] << 16, 1);
    else if (l == 0x82)
        v = huffman_digits(((u32)b[1] << 16) | ((u32)b[2] << 8), 2);
    return v <= 16 ? (s32)v : -1;
}

// grpc-status as the first field of a trailers block, a literal with a new name; -1 if
// it is not that.
static __always_inline s32 grpc_status(const u8 *b, u32 n) {
    u8 b0 = b[0];
    if (b0 != 0x40 && b0 != 0x00 && b0 != 0x10)
        return -1;
    if (b[1] == 0x0b && n >= 15) {
        if (b[2] != 'g' || word_at(b + 3) != GRPC_NAME_PLAIN_0 || b[11] != 'u' ||
            b[12] != 's')
            return -1;
        return grpc_value(b + 13);
    }
    if (b[1] == 0x88 && n >= 12) {
        if (word_at(b + 2) != GRPC_NAME_HUFF)
            return -1;
        return grpc_value(b + 10);
    }
    return -1;
}

#define STATUS_HTTP 1
#define STATUS_GRPC 2

// The status at the start of the current frame's payload (h2_dir.status_due), read
// where the payload's first bytes are: the frame header may have come in an earlier
// read than they.
static __always_inline void read_status(struct h2_cursor *c, struct ep_val *v,
                                        struct h2_dir *d) {
    u8 due = d->status_due;
    d->status_due = 0;
    u8 b[H2_PEEK] = {};
    u32 at = 0;
    u32 n = peek_block(c, d->due_flags, b, &at);
    if (!n)
        return;
    s32 grpc = -1;
    if (due == STATUS_HTTP) {
        u32 status = h2_status(b, n);
        if (status)
            count_status(v, status, 0);
        if (!(d->due_flags & H2_END_STREAM) || b[0] < 0x80 || n < 2)
            return;
        // A response that is only headers: gRPC's Trailers-Only form (an error with no
        // message) has grpc-status after :status and content-type. Read it when
        // :status is indexed and content-type is indexed or the plain literal
        // "application/grpc" with the static name (the first use on a connection).
        u32 skip = 0;
        if (b[1] >= 0x80)
            skip = 2;
        else if (b[1] == 0x5f && n >= 3 && b[2] == 0x10)
            skip = 19;
        if (!skip)
            return;
        u8 t[H2_PEEK] = {};
        u32 avail = c->cur_len - c->pos;
        if (avail <= at + skip)
            return;
        u32 m = avail - at - skip;
        if (m > H2_PEEK - 1)
            m = H2_PEEK - 1;
        if (bpf_probe_read_user(t, BOUNDED(m, H2_PEEK - 1),
                                (const void *)(c->cur + c->pos + at + skip)))
            return;
        grpc = grpc_status(t, m);
    } else {
        grpc = grpc_status(b, n);
    }
    if (grpc > 0 && v)
        __sync_fetch_and_add(&v->errors, 1);
}

static __always_inline void h2_frame(struct h2_cursor *c, struct sock_state *st,
                                     struct ep_val *v, struct h2_conn *h, struct h2_dir *d,
                                     u32 len, u8 type, u8 flags, u32 sid) {
    if (c->dir == 0) {  // the client's frames
        if (type == H2_HEADERS) {
            if ((sid & 1) && sid > h->max_sid) {
                h->max_sid = sid;
                stream_open(c, st, v, h, sid);
            }
        } else if (type == H2_RST_STREAM) {
            stream_end(c, st, v, h, sid, 1);
        }
        return;
    }
    if (type == H2_HEADERS) {
        if (stream_end(c, st, v, h, sid, 0)) {
            d->status_due = len ? STATUS_HTTP : 0;
        } else if ((flags & H2_END_STREAM) && (sid & 1) && sid <= h->max_sid) {
            // Trailers of an answered stream: gRPC.
            if (st->proto == APP_H2)
                st->proto = APP_GRPC;
            d->status_due = len ? STATUS_GRPC : 0;
        }
        d->due_flags = flags;
    } else if (type == H2_RST_STREAM) {
        stream_end(c, st, v, h, sid, 1);
    } else if (type == H2_GOAWAY) {
        u8 b[8] = {};
        if (c->cur_len - c->pos >= 4 &&
            bpf_probe_read_user(b, 4, (const void *)(c->cur + c->pos)) == 0) {
            h->goaway_sid = ((u32)(b[0] & 0x7f) << 24) | ((u32)b[1] << 16) |
                            ((u32)b[2] << 8) | b[3];
            h->flags |= H2C_GOAWAY;
        }
    }
}

static __always_inline int h2_next_chunk(struct h2_cursor *c) {
    if (c->iov == 0 || c->left == 0 || c->iov_i >= c->iovcnt || c->iov_i >= H2_MAX_IOV)
        return 0;
    struct {
        u64 base;
        u64 len;
    } v = {};
    bpf_probe_read_user(&v, sizeof(v), (const void *)(c->iov + (u64)c->iov_i * 16));
    c->iov_i += 1;
    c->cur = v.base;
    c->cur_len = v.len < c->left ? (u32)v.len : c->left;
    c->left -= c->cur_len;
    c->pos = 0;
    return 1;
}

// Parses the cursor's bytes: H2_FRAMES_PER_RUN steps here, then a tail call for more.
// `st`: the socket's state when the caller has it (0: looked up, in a continuation).
static __always_inline int h2_run(void *ctx, struct sock_state *st) {
    int zero = 0;
    struct h2_cursor *c = h2_cursors.lookup(&zero);
    if (!c || !c->active)
        return 0;
    u64 sk = c->sk;
    if (!st)
        st = sockets.lookup(&sk);
    struct h2_conn *h = h2conns.lookup(&sk);
    if (!st || !h) {
        c->active = 0;
        return 0;
    }
    struct h2_dir *d = &h->dir[c->dir & 1];
    struct ep_val *v = endpoint(&st->ep);
    int done = 0;
    for (int i = 0; i < H2_FRAMES_PER_RUN; i++) {
        if (c->pos >= c->cur_len) {
            if (!h2_next_chunk(c)) {
                done = 1;
                break;
            }
            continue;
        }
        if (d->status_due)
            read_status(c, v, d);  // here starts the payload of the frame before
        u32 avail = c->cur_len - c->pos;
        u32 skip = d->skip;
        if (skip) {
            u32 n = skip < avail ? skip : avail;
            d->skip = skip - n;
            c->pos += n;
            continue;
        }
        u32 have = d->have;
        if (have > 8) {
            done = 2;
            break;
        }
        u32 n = 9 - have;
        if (n > avail)
            n = avail;
        bpf_probe_read_user(&d->part[BOUNDED(have, 15)], BOUNDED(n, 15), (const void *)(c->cur + c->pos));
        c->pos += n;
        have += n;
        if (have < 9) {
            d->have = have;
            continue;
        }
        d->have = 0;
        u32 len = ((u32)d->part[0] << 16) | ((u32)d->part[1] << 8) | d->part[2];
        u8 type = d->part[3];
        u8 flags = d->part[4];
        u32 sid = ((u32)(d->part[5] & 0x7f) << 24) | ((u32)d->part[6] << 16) |
                  ((u32)d->part[7] << 8) | d->part[8];
        if (!h2_plausible(len, type, sid)) {
            done = 2;
            break;
        }
        d->skip = len;
        h2_frame(c, st, v, h, d, len, type, flags, sid);
    }
    if (done == 0 && c->runs < H2_MAX_RUNS) {
        c->runs += 1;
        h2_progs.call(ctx, H2_PROG_PARSE);
    }
    c->active = 0;
    if (done != 1) {
        // Not HTTP/2 any more, or more frames than the budget: the parser lost its place.
        h2_give_up(ctx, sk, st);
        return 0;
    }
    if (h->flags & H2C_GOAWAY) {
        h->flags &= ~H2C_GOAWAY;
        sweep_start(ctx, sk, st, h->goaway_sid, cursor_now(c), 1, 0);
    }
    return 0;
}

// The tail-call target: continues the cursor of the call that started it.
int h2_parse_more(void *ctx) {
    return h2_run(ctx, 0);
}
