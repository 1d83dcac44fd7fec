// SPDX-License-Identifier: GPL-2.0
//
// HTTP/2 streams of a connection: opened, answered (a sample), closed, swept (h2.h
// parses the frames that say so). Pasted into the program with h2.h (it uses maps).
//
// Open streams live in the connection's own table (struct h2_conn in latency.h), not
// in one map keyed (socket, stream): closing a connection or a GOAWAY walks its
// H2_SLOTS slots, with no map-wide iteration and no orphan left behind, and the table
// is exact for up to H2_SLOTS streams opened one after another (ids map to
// consecutive slots). A stream that finds no free slot among its H2_PROBES is not
// timed (CNT_STREAMS_FULL_DROPS).
//
// A stream has two lives in its slot. As a request it is open from the client's
// HEADERS to the server's first HEADERS (`start_ns` != 0 until then: the sample, the
// endpoint's `rif`, its oldest open request). As a stream it is open until both ends
// closed it (END_STREAM each way), or a RST_STREAM, a GOAWAY refusing it or the
// connection's end: the slot and the socket's `streams` (what hand-off reads) hold it
// that long, so a response still sending DATA (a server-streaming RPC) keeps its
// connection busy. The ends closed are bits of the slot's `sid` word, set with one
// atomic OR: the CPU that completes them frees the slot, once.

#define H2_SID_MASK 0xffffffffULL
#define H2_END_CLIENT (1ULL << 32)  // the client's END_STREAM was seen
#define H2_END_SERVER (1ULL << 33)  // the server's END_STREAM was seen
#define H2_ENDS (H2_END_CLIENT | H2_END_SERVER)
#define H2_ADOPTED (1ULL << 34)  // h2_frame: a stream opened before the program saw it
#define H2_NEW (1ULL << 35)      // h2_frame: a stream the client opens now (timed)
#define H2C_FIRST_SHIFT 32          // h2_conn.flags: the first stream id the parser opened

static __always_inline u64 cursor_now(struct h2_cursor *c) {
    if (c->now == 0)
        c->now = bpf_ktime_get_ns();
    return c->now;
}

#ifdef HAVE_TCP_SEQ
// Where the server's bytes the application handed over or took stop, in the socket's
// sequence numbers: what the server wrote, on its socket; what a client read, on its.
static __always_inline u32 server_bytes_seq(u64 sk, struct sock_state *st) {
    return tcp_seq(sk, st->ep.role == ROLE_SERVER ? OFF_TCP_WRITE_SEQ : OFF_TCP_COPIED_SEQ);
}
#endif

static __always_inline struct h2_conn *h2_conn_create(u64 sk, struct sock_state *st) {
    struct h2_conn *h = h2conns.lookup(&sk);
    if (h)
        return h;
    int zero = 0;
    struct h2_conn *z = zero_h2.lookup(&zero);
    if (!z)
        return 0;
    h2conns.update(&sk, z);
    h = h2conns.lookup(&sk);
    if (!h) {
        count(CNT_H2_CONNS_FULL_DROPS);
        return 0;
    }
#ifdef HAVE_TCP_SEQ
    // Parsed so far: the bytes before the parser began (a connection older than the
    // program) answer none of the streams it times (h2_peer_closed).
    h->seen = server_bytes_seq(sk, st);
#endif
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

// The request of a stream ends: answered (the server's first HEADERS) or aborted.
static __always_inline void finish_request(struct sock_state *st, struct ep_val *v,
                                           u64 start, u64 now, int aborted) {
    if (!aborted)
        st->requests += 1;
    count(aborted ? CNT_STREAMS_ABORTED : CNT_STREAMS_COMPLETED);
    if (LOAD_ONCE(st->flags) & SOCK_H2_PROBE)
        count(CNT_PROBES_BY_ADDRESS);  // `v` is its probes' endpoint (h2_ep_key)
    if (!v)
        return;
    if (aborted)
        __sync_fetch_and_add(&v->aborted, 1);
    __sync_fetch_and_add(&v->rif, -1);
    count_keepwarm(st, v, 0);  // a stream of the agent's keep-warm probes (h2c, gRPC)
    record_sample(v, now > start ? (now - start) / 1000 : 0, st->proto);
}

// The slot goes free: the stream is over. Its caller won the slot's ends.
static __always_inline void release_slot(struct sock_state *st, struct h2_slot *s, u64 now) {
    s->sid = 0;
    if (st && __sync_fetch_and_add(&st->streams, -1) == 1)
        st->idle_ns = now;
}

// `v`: the socket's endpoint, looked up once per run (0 if the map is full).
// `ends`: the ends already closed (the opening HEADERS carries END_STREAM: a request
// without a body). `timed`: 0 for a stream of an adopted connection that was open
// before the program saw it (stream_adopted): it only keeps the connection busy.
static __always_inline void stream_open(struct h2_cursor *c, struct sock_state *st,
                                        struct ep_val *v, struct h2_conn *h, u32 sid,
                                        u64 ends, int timed) {
    u32 home = sid >> 1;
    for (int i = 0; i < H2_PROBES; i++) {
        struct h2_slot *s = &h->slots[(home + i) & (H2_SLOTS - 1)];
        if (LOAD_ONCE(s->sid) != 0)
            continue;
        if (__sync_val_compare_and_swap(&s->sid, 0, (u64)sid | ends) != 0)
            continue;
        __sync_fetch_and_add(&st->streams, 1);
        if (!timed)
            return;
        s->start_ns = cursor_now(c);
        if (!(h->flags >> H2C_FIRST_SHIFT))
            h->flags |= (u64)sid << H2C_FIRST_SHIFT;
        count(CNT_STREAMS_STARTED);
        if (v)
            __sync_fetch_and_add(&v->rif, 1);
        return;
    }
    count(CNT_STREAMS_FULL_DROPS);
}

// Whether a DATA or HEADERS frame on stream `sid`, which has no slot, is of a stream
// opened before the program saw the connection (an adopted one): a client stream below
// the first one the parser saw opened (any, before that one). Its ends closed so far:
// the server sending means the client most likely finished its request (unary and
// server-streaming calls do before any answer), plus this frame's END_STREAM; 0 when
// it is not to be adopted (or is over with this frame).
static __always_inline u64 stream_adopted(struct h2_cursor *c, struct sock_state *st,
                                          struct h2_conn *h, u32 sid, u8 flags) {
    if (!(st->flags & SOCK_ADOPTED) || !(sid & 1))
        return 0;
    u32 first = (u32)(h->flags >> H2C_FIRST_SHIFT);
    if (first && sid >= first)
        return 0;
    u64 ends = c->dir ? H2_END_CLIENT : 0;
    if (flags & H2_END_STREAM)
        ends |= c->dir ? H2_END_SERVER : H2_END_CLIENT;
    return ends == H2_ENDS ? 0 : ends | H2_ADOPTED;
}

// The slot index of open stream `sid`; H2_SLOTS if it has none (one exit: the
// verifier walks what follows once, not once per probe).
static __always_inline u32 stream_find(struct h2_conn *h, u32 sid) {
    u32 home = sid >> 1;
    u32 found = H2_SLOTS;
    for (int i = 0; i < H2_PROBES; i++) {
        u32 idx = (home + i) & (H2_SLOTS - 1);
        if ((LOAD_ONCE(h->slots[idx].sid) & H2_SID_MASK) == sid) {
            found = idx;
            break;
        }
    }
    return found;
}

// The server's first HEADERS on the stream: its request is answered (a sample); 1 if
// this was that HEADERS. The stream stays open.
static __always_inline int stream_answer(struct h2_cursor *c, struct sock_state *st,
                                         struct ep_val *v, struct h2_slot *s) {
    u64 start = __sync_lock_test_and_set(&s->start_ns, 0);
    if (start == 0)
        return 0;  // answered before (or by another CPU)
    finish_request(st, v, start, cursor_now(c), 0);
    return 1;
}

// One end (H2_END_CLIENT or H2_END_SERVER) or both (H2_ENDS: a RST_STREAM) closed the
// stream; the slot goes once both have. A request still unanswered then is aborted.
static __always_inline void stream_close(struct h2_cursor *c, struct sock_state *st,
                                         struct ep_val *v, struct h2_slot *s, u64 ends) {
    u64 old = __sync_fetch_and_or(&s->sid, ends);
    if ((old & H2_ENDS) == H2_ENDS || ((old | ends) & H2_ENDS) != H2_ENDS)
        return;  // closed before, or half-closed now
    u64 start = __sync_lock_test_and_set(&s->start_ns, 0);
    u64 now = cursor_now(c);
    if (start)
        finish_request(st, v, start, now, 1);
    release_slot(st, s, now);
}

// Closing many streams at once (connection end, GOAWAY, giving up) is a sweep of the
// connection's slots in a program of its own, tail-called (the caller's verifier
// budget): all H2_SLOTS in one run with may_goto (LOOP_BREAK), so a sweep takes one
// tail call, the last one a parser's call may have (h2.h); without, H2_SWEEP_SLOTS
// per run, continued by tail calls. The sweep needs no `sockets` entry (it may be
// gone): the endpoint and protocol travel with it.
#define H2_SWEEP_SLOTS 16

struct h2_sweep {
    u64 sk;
    struct ep_key ep;
    u64 now;
    u32 above;   // streams with ids above this close (0: all)
    u32 next;    // next slot
    u8 sample;   // 1: each unanswered one is an aborted sample; 0: dropped (the parser
                 //   lost its place)
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
    if (st->flags & SOCK_H2_PROBE)  // decided by h2_run before any stream opened
        w->ep.role = ROLE_PROBE;
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
    for (int i = 0;; i++) {
        LOOP_BREAK(i, H2_SWEEP_SLOTS);
        u32 idx = LOAD_ONCE(w->next);
        if (idx >= H2_SLOTS)
            break;
        w->next = idx + 1;
        struct h2_slot *s = &h->slots[BOUNDED(idx, H2_SLOTS - 1)];
        u64 sid = LOAD_ONCE(s->sid);
        if (sid == 0 || (sid & H2_SID_MASK) <= w->above)
            continue;
        u64 old = __sync_fetch_and_or(&s->sid, H2_ENDS);
        if ((old & H2_ENDS) == H2_ENDS)
            continue;  // another CPU closed it
        u64 start = __sync_lock_test_and_set(&s->start_ns, 0);
        release_slot(st, s, w->now);
        if (start == 0)
            continue;  // answered: only the stream was open
        count(w->sample ? CNT_STREAMS_ABORTED : CNT_REQUESTS_CANCELLED);
        if (!v)
            continue;
        __sync_fetch_and_add(&v->rif, -1);
        if (w->sample) {
            __sync_fetch_and_add(&v->aborted, 1);
            record_sample(v, w->now > start ? (w->now - start) / 1000 : 0, w->proto);
        }
    }
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

// The peer's FIN (ESTABLISHED -> CLOSE_WAIT) ends the connection's streams too, but
// only once the parser has seen the server's bytes before it, which may answer them:
// on a client's socket, the answers a server sent just before closing, read (and
// parsed) after its FIN arrived; on the server's, a send parsed once its copy is done,
// which may still be in parsing on another CPU when the client, having read it,
// closes. Streams those bytes answer are answered, not aborted. So the FIN marks the
// connection (peer_fin) and the parse of server bytes that catches up ends it (h2_run
// records how far it got in `seen`); the close does in any case. The client's bytes
// answer nothing: a hung server that never reads the client's last frames still has
// its streams aborted at the FIN. Plain stores both ways (every parse of server bytes
// makes one, the FIN is rare): should a parse and a FIN on another CPU miss each other
// (a store still in a CPU's buffer), the connection ends at its close instead, with the
// same samples. Without tcp_sock's offsets (BTF) the FIN ends the streams at once.
#ifdef HAVE_TCP_SEQ
// After the peer's FIN: whether the parser has seen all the server's bytes, written on
// the server's socket, received on a client's (rcv_nxt counts the FIN too).
static __always_inline int h2_caught_up(u64 sk, struct sock_state *st, struct h2_conn *h) {
    u32 end = st->ep.role == ROLE_SERVER ? tcp_seq(sk, OFF_TCP_WRITE_SEQ)
                                         : tcp_seq(sk, OFF_TCP_RCV_NXT) - 1;
    return LOAD_ONCE(h->seen) == end;
}
#endif

// The peer's FIN: h2_close now, or by the parse that catches up. Last step.
static __always_inline void h2_peer_closed(void *ctx, u64 sk, struct sock_state *st) {
#ifdef HAVE_TCP_SEQ
    if (st->proto == APP_HTTP1 || st->proto == APP_OPAQUE)
        return;
    struct h2_conn *h = h2conns.lookup(&sk);
    if (!h)
        return;
    h->peer_fin = 1;
    if (!h2_caught_up(sk, st, h))
        return;
#endif
    h2_close(ctx, sk, st);
}

// The parser lost its place: the connection is not measured any more. Last step.
static __always_inline void h2_give_up(void *ctx, u64 sk, struct sock_state *st) {
    __sync_fetch_and_or(&st->flags, SOCK_UNPARSED);
    count(CNT_H2_DESYNCS);
    sweep_start(ctx, sk, st, 0, bpf_ktime_get_ns(), 0, 1);
    h2conns.delete(&sk);
}
