// SPDX-License-Identifier: GPL-2.0
//
// HTTP/2 (h2c) per stream, from the frame headers in the bytes an application hands
// to or takes from a TCP socket (the syscall boundary; payload.h finds the bytes).
//
// A request is a stream: the client's HEADERS opening it (ids only grow, so a HEADERS
// with an id at or below the highest opened one is trailers, not a new stream) -> the
// server's first HEADERS on it. RST_STREAM (either side), a server GOAWAY (streams
// above its last-stream-id) and the end of the connection abort it: an aborted stream
// is a sample of its time open, counted in `aborted`, like an HTTP/1 request. The
// stream itself stays open past its answer, until END_STREAM went both ways (or a
// reset, GOAWAY or the connection's end): h2_streams.h.
//
// The parser carries its place per direction across calls (h2_dir: payload bytes to
// skip, a frame header split across reads; hpack_state: where it is in a server
// header block). A step is a frame header with its payload skipped when the chunk
// holds it, the rest of a payload, a move to the next iovec of a
// readv/writev/recvmsg/sendmsg, or (walking) up to the next field event of a server
// header block (hpack.h). Every run is a tail call (the first too: the hooks' own
// programs stay small for the verifier). The kernel allows 33 tail calls in a row:
// an adopted connection's first call and a sweep take one each, the parser the rest.
// Per call:
//   - the full parser, h2_parse_more, runs H2_FULL_RUNS times H2_FRAMES_PER_RUN steps
//     (480: some 70 responses of a few header fields each, 30 gRPC responses with
//     literals, hundreds of request frames). Its step walks header blocks, so the
//     verifier explores each of its 16 steps: 32 are more than it takes.
//   - then the skim, h2_skim_more, takes the rest of a larger call (a loaded server
//     batching hundreds of responses into one write): up to H2_SKIM_STEPS steps in
//     its one run. A frames-only step (no header block walk) in a may_goto loop
//     (LOOP_BREAK), which the verifier walks until its state repeats, whatever the
//     steps (so Linux 6.9 and later: on older kernels there is no skim). Frames and
//     streams are exact (opened, answered, ended, reset, GOAWAY, trailers making the
//     connection gRPC); a header block's status is read only
//     when the block repeats one the walk read (hpack.h: hpack_skim), otherwise it
//     is unread, and a block that may have added to the dynamic table leaves the
//     table's later references unread (static-table statuses stay readable).
// Beyond that (more than 4,500 frames in one call), or on bytes that cannot be
// HTTP/2 frames (something moved bytes through a path the program does not see), the
// connection is given up: its open streams are dropped without samples (the sweep
// has its tail call left), it is flagged SOCK_UNPARSED and is not measured any more
// (CNT_H2_DESYNCS counts these; CNT_H2_SKIMS the calls skimmed).
//
// Streams are opened, ended and swept in h2_streams.h; statuses are read from every
// header block the server sends by hpack.h.
// An h2 connection whose responses end in trailers (a second server HEADERS with
// END_STREAM) is gRPC from then on (APP_GRPC).

#define H2_DATA 0
#define H2_HEADERS 1
#define H2_PRIORITY_FRAME 2
#define H2_RST_STREAM 3
#define H2_SETTINGS 4
#define H2_PUSH_PROMISE 5
#define H2_PING 6
#define H2_GOAWAY 7
#define H2_WINDOW_UPDATE 8
#define H2_CONTINUATION 9

#define H2_END_STREAM 0x1
#define H2_END_HEADERS 0x4
#define H2_PADDED 0x8
#define H2_PRIORITY 0x20

#define H2_PREFACE_LEN 24
#define H2_FRAMES_PER_RUN 16  // steps of a run of the full parser
#define H2_MAX_RUNS 30        // tail-called runs after the first
#ifdef HAVE_MAY_GOTO
#define H2_FULL_RUNS 30       // runs of the full parser, the first one included
#else
#define H2_FULL_RUNS (H2_MAX_RUNS + 1)  // no skim: its loop needs may_goto
#endif
#define H2_SKIM_STEPS 4096    // steps of a skim run (the others)
#define H2_MAX_IOV 1024  // UIO_MAXIOV: every iovec is a step of the run budget

#define H2C_GOAWAY 1  // h2_conn.flags: goaway_sid is to be applied

#if !defined(MAX_H2_CONNS)
#error "MAX_H2_CONNS must be defined (-D)"
#endif

BPF_F_TABLE("hash", u64, struct h2_conn, h2conns, MAX_H2_CONNS, BPF_F_NO_PREALLOC);
BPF_PERCPU_ARRAY(zero_h2, struct h2_conn, 1);
// Where a parser run records when its endpoint could not be created (map full).
BPF_PERCPU_ARRAY(spare_ep, struct ep_val, 1);

// User bytes are read a window at a time: a bpf_probe_read_user costs about as much
// for 9 bytes as for 512 (its cost is mostly fixed), and a call's frame headers and
// header-block bytes lie close together. The window holds up to H2_WIN bytes of the
// current chunk from win_addr on; it is emptied for every call (on_payload): the next
// call may reuse the buffer. (Reading iovec entries a batch at a time too is more than
// the verifier's budget for h2_parse_more takes.)
#define H2_WIN 512

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
    u64 win_addr;  // user address of win[0]
    u32 win_len;   // bytes in win[] (0: empty)
    u32 steps;     // steps left in a skim run
    u8 win[H2_WIN + 16];  // 16 spare bytes: a fixed-size load at any offset stays inside
};
BPF_PERCPU_ARRAY(h2_cursors, struct h2_cursor, 1);

// The offset in win[] of the `need` (1 to 16) bytes at the cursor, the window read
// afresh from the cursor on when they are not in it (the caller knows the chunk has
// them); H2_WIN if they cannot be read. (One way out of the refill and a single test
// at the end: the verifier walks this for every step of a run.)
static __always_inline u32 win_at(struct h2_cursor *c, u32 need) {
    u64 at = c->cur + c->pos;
    if (at < c->win_addr || at - c->win_addr + need > c->win_len) {
        u32 n = c->cur_len - c->pos;  // only the chunk's bytes: past them may not be mapped
        if (n > H2_WIN)
            n = H2_WIN;
        c->win_addr = at;
        c->win_len = bpf_probe_read_user(c->win, BOUNDED(n - 1, H2_WIN - 1) + 1,
                                         (const void *)at) ? 0 : n;
    }
    u64 off = at - LOAD_ONCE(c->win_addr);
    return off + need <= LOAD_ONCE(c->win_len) ? (u32)off : H2_WIN;
}

// The window's 8 bytes from `off` (win_at's), as one little-endian word; those past
// what was asked for are not the call's.
static __always_inline u64 win_word(struct h2_cursor *c, u32 off) {
    return *(u64 *)&c->win[BOUNDED(off, H2_WIN - 1)];
}

// Tail-call targets (the loader fills them): the parser's continuation, the sweep, the
// first bytes of an adopted connection, and the reader of an HTTP/1 request's target
// (both payload.h).
#define H2_PROG_PARSE 0
#define H2_PROG_SWEEP 1
#define H2_PROG_ADOPT 2
#define PROG_HTTP1_TARGET 3
#define H2_PROG_SKIM 4
BPF_PROG_ARRAY(h2_progs, 5);

#include "h2_streams.h"

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

#include "hpack.h"

// `skim`: a constant; 1: header blocks are not walked (hpack_skim).
static __always_inline void h2_frame(struct h2_cursor *c, struct sock_state *st,
                                     struct ep_val *v, struct h2_conn *h, struct h2_dir *d,
                                     u32 len, u8 type, u8 flags, u32 sid, int skim) {
    if (type == H2_GOAWAY) {
        u32 off = c->dir == 1 && c->cur_len - c->pos >= 4 ? win_at(c, 4) : H2_WIN;
        if (off < H2_WIN) {
            u32 w = (u32)win_word(c, off);
            h->goaway_sid = ((w & 0x7f) << 24) | ((w & 0xff00) << 8) |
                            ((w >> 8) & 0xff00) | (w >> 24);
            h->flags |= H2C_GOAWAY;
        }
        return;
    }
    if (c->dir == 1 && (type == H2_CONTINUATION || type == H2_PUSH_PROMISE)) {
        h->server_cut = (flags & H2_END_HEADERS) ? 0 : H2_CUT_BLOCK;
        if (skim) {
            hpack_skim(c, &h->hp, v, len, type, flags, HPB_NONE);
            hp_skim_end(&h->hp, v, 0);
            return;
        }
        d->skip = 0;  // the header block is walked (hpack.h)
        hpack_frame(&h->hp, v, len, type, flags, HPB_NONE, 0, 0);
        return;
    }
    // DATA without END_STREAM, the bulk of the frames, costs this one test (on a
    // connection older than the program, it may be of a stream opened before).
    if (type == H2_DATA ? !(flags & H2_END_STREAM) && !(st->flags & SOCK_ADOPTED)
                        : (type != H2_HEADERS && type != H2_RST_STREAM))
        return;
    u64 opening = 0;
    struct h2_slot *s = 0;
    if (c->dir == 0 && type == H2_HEADERS && (sid & 1) && sid > h->max_sid) {
        h->max_sid = sid;
        opening = H2_NEW | ((flags & H2_END_STREAM) ? H2_END_CLIENT : 0);
    } else {
        u32 idx = stream_find(h, sid);
        if (idx < H2_SLOTS)
            s = &h->slots[BOUNDED(idx, H2_SLOTS - 1)];
        else if (type != H2_RST_STREAM)
            opening = stream_adopted(c, st, h, sid, flags);
    }
    u8 role = HPB_NONE;  // what a server HEADERS' block counts (hpack.h)
    if (opening) {
        // A new stream (H2_NEW: timed), or one older than the program (H2_ADOPTED).
        stream_open(c, st, v, h, sid, opening & H2_ENDS, (opening & H2_NEW) != 0);
    } else {
        u64 ends = H2_ENDS;  // a RST_STREAM closes it both ways
        if (type != H2_RST_STREAM) {
            if (c->dir == 1 && type == H2_HEADERS) {
                if (s && stream_answer(c, st, v, s)) {
                    role = (flags & H2_END_STREAM) ? HPB_RESPONSE_END : HPB_RESPONSE;
                } else if ((flags & H2_END_STREAM) && (sid & 1) && sid <= h->max_sid) {
                    // Trailers of an answered stream: gRPC.
                    if (st->proto == APP_H2)
                        st->proto = APP_GRPC;
                    role = HPB_TRAILERS;
                }
            }
            ends = !(flags & H2_END_STREAM) ? 0 : c->dir ? H2_END_SERVER : H2_END_CLIENT;
        }
        if (s && ends)
            stream_close(c, st, v, s, ends);
    }
    if (c->dir == 1 && type == H2_HEADERS) {
        // Every server header block is walked, whatever its stream: the dynamic table's
        // insertions are counted from all of them.
        h->server_cut = (flags & H2_END_HEADERS) ? 0 : H2_CUT_BLOCK;
        if (skim) {
            hpack_skim(c, &h->hp, v, len, type, flags, role);
            hp_skim_end(&h->hp, v, LOAD_ONCE(st->proto) == APP_GRPC);
            return;
        }
        // A short block is remembered with what it reads (struct hpack_memo); the
        // same bytes again, with nothing added to the table since, read the same
        // without a walk (the payload is skipped like a DATA frame's).
        u64 w = 0;
        u32 n = block_word(c, len, flags, &w);
        if (!hpack_frame(&h->hp, v, len, type, flags, role, w, n))
            d->skip = 0;
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

// One step of the parser (see the top of this file): 0 to go on, 1 when the call's
// bytes are all parsed, 2 when the parser lost its place. `skim`: a constant.
static __always_inline int h2_step(struct h2_cursor *c, struct sock_state *st,
                                   struct ep_val *v, struct h2_conn *h, struct h2_dir *d,
                                   int skim) {
    if (c->pos >= c->cur_len)
        return h2_next_chunk(c) ? 0 : 1;
    if (!skim && c->dir == 1 && h->hp.frame_left) {
        hpack_step(c, &h->hp, v);
        return 0;
    }
    u32 avail = c->cur_len - c->pos;
    u32 skip = d->skip;
    if (skip) {
        u32 n = skip < avail ? skip : avail;
        d->skip = skip - n;
        c->pos += n;
        return 0;
    }
    u32 have = d->have;
    if (have > 8)
        return 2;
    u32 n = 9 - have;
    if (n > avail)
        n = avail;
    u32 off = win_at(c, n);
    if (off >= H2_WIN)
        return 2;  // unreadable: the parser's place is lost
    // 16 bytes copied whatever n: those past n are overwritten or never looked at.
    u64 *from = (u64 *)&c->win[BOUNDED(off, H2_WIN - 1)];
    u64 *to = (u64 *)&d->part[BOUNDED(have, 15)];
    to[0] = from[0];
    to[1] = from[1];
    c->pos += n;
    have += n;
    if (have < 9) {
        d->have = have;
        return 0;
    }
    d->have = 0;
    u32 len = ((u32)d->part[0] << 16) | ((u32)d->part[1] << 8) | d->part[2];
    u8 type = d->part[3];
    u8 flags = d->part[4];
    u32 sid = ((u32)(d->part[5] & 0x7f) << 24) | ((u32)d->part[6] << 16) |
              ((u32)d->part[7] << 8) | d->part[8];
    if (!h2_plausible(len, type, sid))
        return 2;
    d->skip = len;
    h2_frame(c, st, v, h, d, len, type, flags, sid, skim);
    // The payload skipped in the same step, as far as the chunk holds it (a header
    // block the walk takes has left no skip).
    u32 left = LOAD_ONCE(d->skip);
    u32 here = c->cur_len - c->pos;
    if (left <= here) {
        d->skip = 0;
        c->pos += left;
    }
    return 0;
}

// Parses the cursor's bytes: H2_FRAMES_PER_RUN steps here (H2_SKIM_STEPS when
// skimming), then a tail call for more. `st`: the socket's state when the caller has
// it (0: looked up, in a continuation). `skim`: a constant (the two programs).
static __always_inline int h2_run(void *ctx, struct sock_state *st, int skim) {
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
    struct ep_key key;
    h2_ep_key(st, &key);  // a kubelet gRPC probe's connection: its probes' endpoint
    struct ep_val *v = endpoint(&key);
    if (!v) {
        // The endpoint map is full (counted): what this run records goes to a spare.
        // Never null below: one pointer state for the verifier, not two per check.
        int zero = 0;
        v = spare_ep.lookup(&zero);
        if (!v) {
            c->active = 0;
            return 0;
        }
    }
    if (skim && c->runs == H2_FULL_RUNS)
        count(CNT_H2_SKIMS);  // the call's first skim run
    if (skim && c->dir == 1 && h->hp.frame_left) {
        // The walk was in a header block: the rest of its frame is skipped.
        d->skip = h->hp.frame_left;
        h->hp.frame_left = 0;
        hp_skimmed(&h->hp, h->hp.blk_word, h->hp.blk_len);
        hp_skim_end(&h->hp, v, st->proto == APP_GRPC);
    }
    int done = 0;
    if (skim) {
        // The bound in memory, and may_goto: the verifier walks the loop until its
        // state repeats, not once per step (LOOP_BREAK). Nothing of a step stays in
        // registers for the next (its direction is looked up again): its state then
        // repeats after a few steps.
        c->steps = H2_SKIM_STEPS;
        for (int i = 0;; i++) {
            LOOP_BREAK(i, 4);  // (without may_goto no call gets here)
            u32 steps = LOAD_ONCE(c->steps);
            if (steps == 0)
                break;
            c->steps = steps - 1;
            done = h2_step(c, st, v, h, &h->dir[c->dir & 1], 1);
            if (done)
                break;
        }
    } else {
        for (int i = 0; i < H2_FRAMES_PER_RUN; i++) {
            done = h2_step(c, st, v, h, d, 0);
            if (done)
                break;
        }
    }
    if (done == 0 && c->runs < H2_MAX_RUNS) {
        c->runs += 1;
        // One call per index, each a constant: the kernel makes such a tail call a
        // direct jump, one whose index varies an indirect one (a retpoline). (The
        // barrier after one keeps clang from merging the two into one call.)
        if (skim || c->runs >= H2_FULL_RUNS) {
            h2_progs.call(ctx, H2_PROG_SKIM);
            asm volatile("" ::: "memory");
        } else {
            h2_progs.call(ctx, H2_PROG_PARSE);
        }
    }
    c->active = 0;
    if (done != 1) {
        // Not HTTP/2 any more, or more frames than the budget: the parser lost its place.
        h2_give_up(ctx, sk, st);
        return 0;
    }
    if (c->dir == 1) {
        // Where the server's bytes stop: in frames, for hand-off (latency.h); in the
        // socket's sequence numbers, for the peer's FIN (h2_streams.h: h2_peer_closed),
        // which may have come before these were parsed.
        h->server_cut = (h->server_cut & H2_CUT_BLOCK) |
                        (d->skip || d->have || h->hp.frame_left ? H2_CUT_FRAME : 0);
#ifdef HAVE_TCP_SEQ
        h->seen = server_bytes_seq(sk, st);
        if (LOAD_ONCE(h->peer_fin) && h2_caught_up(sk, st, h)) {
            h2_close(ctx, sk, st);
            return 0;
        }
#endif
    }
    if (h->flags & H2C_GOAWAY) {
        h->flags &= ~H2C_GOAWAY;
        sweep_start(ctx, sk, st, h->goaway_sid, cursor_now(c), 1, 0);
    }
    return 0;
}

// The tail-call target: continues the cursor of the call that started it.
int h2_parse_more(void *ctx) {
    return h2_run(ctx, 0, 0);
}

// The tail-call target once the full parser's runs are spent: frames only.
int h2_skim_more(void *ctx) {
    return h2_run(ctx, 0, 1);
}
