// SPDX-License-Identifier: GPL-2.0
//
// HTTP/2 streams of a connection: opened, ended (a sample), swept (h2.h parses the
// frames that say so). Pasted into the program with h2.h (it uses maps).
//
// Open streams live in the connection's own table (struct h2_conn in latency.h), not
// in one map keyed (socket, stream): closing a connection or a GOAWAY walks its
// H2_SLOTS slots, with no map-wide iteration and no orphan left behind, and the table
// is exact for up to H2_SLOTS streams opened one after another (ids map to
// consecutive slots). A stream that finds no free slot among its H2_PROBES is not
// timed (CNT_STREAMS_FULL_DROPS).

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
