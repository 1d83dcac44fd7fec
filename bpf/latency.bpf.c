// SPDX-License-Identifier: GPL-2.0
//
// Aviator: per-endpoint request latency from TCP traffic, compiled by BCC at agent start.
//
// A request on a connection is the time from the first bytes of a request to the first
// bytes of its response, seen on each end's own socket:
//   server role (keyed by LOCAL ip:port):  first data received -> first data sent
//   client role (keyed by REMOTE ip:port): first data sent     -> first data received
//
// Only tracepoints are used (no kprobes, no fentry). Their arguments come from the
// running kernel's format files, so they are correct whatever headers BCC compiles
// with. The few kernel struct fields read directly (addresses of sockets first seen in
// a raw hook, the payload length in the raw tcp_probe hook) use offsets taken from the
// running kernel's BTF and passed in as -D defines:
//   OFF_SKC_DADDR OFF_SKC_RCV_SADDR OFF_SKC_DPORT OFF_SKC_NUM OFF_SKC_FAMILY
//   OFF_SKC_STATE OFF_SKC_V6_DADDR OFF_SKC_V6_RCV_SADDR
//   OFF_SKC_NET OFF_NET_NS_INUM (the socket's network namespace: skc_net.net->ns.inum)
//   OFF_SKB_LEN OFF_SKB_DATA (sk_buff, for the raw tcp_probe hook)
// Other defines: MAX_SOCKETS, MAX_ENDPOINTS, MAX_LISTENERS (map sizes, required);
// SEND_HOOK_RAW (sends seen by raw tracepoint tcp_sendmsg_locked, else by
// sock:sock_send_length); RECV_HOOK_RAW (tcp_probe attached as a raw tracepoint, else
// as a classic one with its arguments).
//
// What user space shares with this program (map keys and values, counter indexes,
// roles, the histogram's shape) is in latency.h, its only copy; the histogram's index
// code is in histogram.h.

#include <uapi/linux/ptrace.h>

#include "latency.h"
#include "histogram.h"

// A plain (non-locked) read the compiler must not cache or elide.
#define LOAD_ONCE(x) (*(volatile typeof(x) *)&(x))
// `n & mask` computed in the register handed on: clang may not drop the mask as
// redundant (it knows a bound the verifier does not see on a merged path).
#define BOUNDED(n, mask) ({ u32 __b = (n); asm volatile("" : "+r"(__b)); __b & (mask); })
// LOOP_BREAK(i, n): the head of a loop `for (int i = 0;; i++)` whose real bound is
// elsewhere (in memory). With may_goto (Linux 6.9; the loader defines HAVE_MAY_GOTO),
// `break` once the kernel's bound on the loop's iterations is reached: the verifier
// walks such a loop until its state repeats, not once per iteration, so its body is
// verified a few times however many times it runs (`i` is never compared: a counter
// the verifier knows would make each iteration's state new). Without it, a bounded
// loop of `n` iterations, each one verified.
#ifdef HAVE_MAY_GOTO
#define LOOP_BREAK(i, n) COND_BREAK(break)
#else
#define LOOP_BREAK(i, n) \
    if ((i) >= (n))      \
    break
#endif
// `expr` when the kernel's bound is reached: may_goto, spelled in bytes for
// assemblers that lack it.
#define COND_BREAK(expr)                                                       \
    ({                                                                         \
        __label__ l_break, l_continue;                                         \
        asm volatile goto("1:.byte 0xe5; .byte 0;"                             \
                          ".long ((%l[l_break] - 1b - 8) / 8) & 0xffff;"       \
                          ".short 0" :::: l_break);                            \
        goto l_continue;                                                       \
    l_break:                                                                   \
        expr;                                                                  \
    l_continue:;                                                               \
    })

#define FAMILY_INET 2
#define FAMILY_INET6 10
#define PROTO_TCP 6
#define MSG_PEEK_FLAG 2
#define MSG_ERRQUEUE_FLAG 0x2000

#define STATE_ESTABLISHED 1
#define STATE_SYN_SENT 2
#define STATE_SYN_RECV 3
#define STATE_CLOSE 7
#define STATE_CLOSE_WAIT 8
#define STATE_LISTEN 10

#define SOCK_CLOSED 1      // left ESTABLISHED: no new requests are measured
#define SOCK_STATUS_DUE 2  // HTTP/1: a response began; its status line is in the next
                           //   response bytes the application hands over or reads
#define SOCK_UNPARSED 4    // h2 given up (desync): not measured any more
#define SOCK_ADOPTED 8     // first seen mid-connection: its first bytes may be mid-stream
#define SOCK_PEER_CHECKED 16  // whether the peer is a node address was looked up:
#define SOCK_NODE_PEER 32     //   it is (a server socket the kubelet may probe through)
#define SOCK_PROBE 64         // the open request's target is one of its endpoint's probes
#define SOCK_STATUS_PROBE 128 // the status due (SOCK_STATUS_DUE) is a probe's response
#define SOCK_TRY 0x100     // adopted: one call not recognised (payload.h, adopted_undecided)
#define SOCK_TRIES 0xf00
#define SOCK_AGENT_NOTED 0x1000  // a client socket of the agent's, in agent_conns
#define SOCK_AGENT_CHECKED 0x2000  // whether the peer is an agent connection was looked up:
#define SOCK_FROM_AGENT 0x4000    //   it is (its requests are keep-warm probes)
#define SOCK_H2_PROBE_CHECKED (1ULL << 40)  // whether its HTTP/2 streams are the kubelet's
#define SOCK_H2_PROBE (1ULL << 41)          //   gRPC probes was decided: they are

// Whether a socket's requests are timed per stream from its payload (not by the
// connection-level hooks).
#define PER_STREAM(st) ((st)->proto == APP_H2 || (st)->proto == APP_GRPC || \
                        ((st)->flags & SOCK_UNPARSED))

// Map sizes come from user space (the agent's flags), the only place with defaults.
#if !defined(MAX_SOCKETS) || !defined(MAX_ENDPOINTS) || !defined(MAX_LISTENERS)
#error "MAX_SOCKETS, MAX_ENDPOINTS and MAX_LISTENERS must be defined (-D)"
#endif

BPF_TABLE("lru_hash", u64, struct sock_state, sockets, MAX_SOCKETS);
BPF_F_TABLE("hash", struct ep_key, struct ep_val, endpoints, MAX_ENDPOINTS, BPF_F_NO_PREALLOC);
// The endpoints touched since user space last drained this map (value: 1): each read
// decodes only those, not the whole `endpoints` map. Set on every lookup that is about
// to change an endpoint, so a change can land just after user space drained the mark;
// user space also re-reads the endpoints marked the read before (aviator/agent/bpf/
// tracked.py).
BPF_TABLE("hash", struct ep_key, u8, ep_dirty, MAX_ENDPOINTS);
BPF_TABLE("lru_hash", struct listen_key, u8, listeners, MAX_LISTENERS);
// Never written: a zeroed value to create endpoints from (too big for the BPF stack).
BPF_PERCPU_ARRAY(zero_ep, struct ep_val, 1);
BPF_PERCPU_ARRAY(counters, u64, NUM_COUNTERS);
// Written by user space; slots in enum config_slot.
BPF_ARRAY(config, u32, NUM_CONFIG);
// Written by user space: the endpoints the kubelet probes and the node's own addresses
// (latency.h: ROLE_PROBE).
BPF_HASH(probe_ports, struct probe_key, struct probe_paths, MAX_PROBE_PORTS);
BPF_HASH(node_addrs, struct addr_key, u8, MAX_NODE_ADDRS);
BPF_TABLE("lru_hash", struct probe_key, u8, agent_conns, MAX_AGENT_CONNS);

static __always_inline int adopting(void) {
    int slot = CONFIG_ADOPTING;
    u32 *ready = config.lookup(&slot);
    return ready && *ready;
}

static __always_inline void count(u32 which) {
    u64 *c = counters.lookup(&which);
    if (c)
        *c += 1;  // per-CPU: no atomics needed
}

// Marks an endpoint for user space's next read (a lookup first: the mark is usually
// there already, and a lookup costs less than an update).
static __always_inline void touch(struct ep_key *key) {
    if (ep_dirty.lookup(key))
        return;
    u8 one = 1;
    ep_dirty.update(key, &one);
}

// The endpoint's counters, created when missing; marked changed (every caller is about
// to change them). 0 when the map is full.
static __always_inline struct ep_val *endpoint(struct ep_key *key) {
    struct ep_val *v = endpoints.lookup(key);
    if (v) {
        touch(key);
        return v;
    }
    int zero = 0;
    struct ep_val *z = zero_ep.lookup(&zero);
    if (!z)
        return 0;
    endpoints.insert(key, z);  // may race with another CPU: either insert wins
    v = endpoints.lookup(key);
    if (!v) {
        count(CNT_ENDPOINTS_FULL_DROPS);
        return 0;
    }
    touch(key);
    return v;
}

// The connection turned out to be HTTP/2: the connection-level request its preface
// started is not a request (no sample; its in-flight count is given back).
static __always_inline void cancel_request(struct sock_state *st) {
    u64 start = __sync_lock_test_and_set(&st->start_ns, 0);
    if (start == 0)
        return;
    count(CNT_REQUESTS_CANCELLED);
    struct ep_val *v = endpoint(&st->ep);
    if (v)
        __sync_fetch_and_add(&v->rif, -1);
}

// The clock is read only once an event is known to start or complete a request: later
// bytes of a request or a response (and pure ACKs) cost neither the clock nor a locked
// instruction, except a server's later sends of an answer (answer_goes_on).
static __always_inline void start_request(struct sock_state *st) {
    if (LOAD_ONCE(st->start_ns) != 0)
        return;
    u64 now = bpf_ktime_get_ns();
    if (__sync_val_compare_and_swap(&st->start_ns, 0, now) != 0)
        return;  // a request is already open: later bytes of the same request
    count(CNT_REQUESTS_STARTED);
    struct ep_val *v = endpoint(&st->ep);
    if (v)
        __sync_fetch_and_add(&v->rif, 1);
    // The caller saw a connection timed per connection, but another CPU may have made
    // it HTTP/2 since (become_h2: protocol, then the undo) and undone nothing yet: then
    // this request would stay open, in flight, to be aborted at the close, a sample of
    // the connection's life. The start and the undo are both locked exchanges: one of
    // the two sees the other.
    if (PER_STREAM(st))
        cancel_request(st);
}

// Records one request of `us` microseconds into its endpoint.
static __always_inline void record_sample(struct ep_val *v, u64 us, u32 proto) {
    if (proto < NUM_APP)
        __sync_fetch_and_add(&v->proto_requests[proto], 1);
    u32 idx = bucket_index(us);
    // Hide idx's provenance from clang so the bound check below stays on the register
    // the verifier sees indexing the array (clang otherwise folds it into the v < 16
    // test on an earlier register).
    asm volatile("" : "+r"(idx));
    if (idx >= NUM_BUCKETS)
        return;
    __sync_fetch_and_add(&v->buckets[idx], 1);
    __sync_fetch_and_add(&v->count, 1);
    __sync_fetch_and_add(&v->sum_us, us);
    u64 cur = v->max_us;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        if (us <= cur)
            break;
        u64 prev = __sync_val_compare_and_swap(&v->max_us, cur, us);
        if (prev == cur)
            break;
        cur = prev;
    }
}

// The kubelet's probes (latency.h: ROLE_PROBE) -----------------------------------------

static __always_inline struct probe_paths *probe_paths_of(struct sock_state *st) {
    struct probe_key k = {};
    __builtin_memcpy(k.addr, st->ep.addr, 16);
    k.port = st->ep.port;
    return probe_ports.lookup(&k);
}

// Whether a server socket's peer is a node address (looked up once per connection).
static __always_inline int node_peer(struct sock_state *st) {
    if (st->ep.role != ROLE_SERVER)
        return 0;
    u64 flags = LOAD_ONCE(st->flags);
    if (!(flags & SOCK_PEER_CHECKED)) {
        struct addr_key k = {};
        __builtin_memcpy(k.addr, st->other, 16);
        flags = SOCK_PEER_CHECKED | (node_addrs.lookup(&k) ? SOCK_NODE_PEER : 0);
        __sync_fetch_and_or(&st->flags, flags);
    }
    return (flags & SOCK_NODE_PEER) != 0;
}

// Whether HTTP/1 requests on this socket may be the kubelet's probes: a server socket
// whose peer is a node address on an endpoint with HTTP probes (paths, or none: HTTPS).
static __always_inline int probe_candidate(struct sock_state *st) {
    if (!node_peer(st))
        return 0;
    struct probe_paths *p = probe_paths_of(st);
    return p && (p->count || !p->grpc);
}

// Whether the request that just ended was a probe (its target matched, or it was not
// read and the address and port say so); readies the target reader for the next one.
static __always_inline int take_probe(struct sock_state *st) {
    int probe = 0;
    if (LOAD_ONCE(st->flags) & SOCK_PROBE) {
        __sync_fetch_and_and(&st->flags, ~(u64)SOCK_PROBE);
        count(CNT_PROBES_BY_PATH);
        probe = 1;
    } else if (st->path_state != PATH_DONE && probe_candidate(st)) {
        count(CNT_PROBES_BY_ADDRESS);
        probe = 1;
    }
    st->path_state = PATH_IDLE;
    return probe;
}

// Where a request's sample goes: `v` (the socket's endpoint), or its probes' endpoint.
static __always_inline struct ep_val *sample_endpoint(struct sock_state *st,
                                                      struct ep_val *v, int probe) {
    if (!probe)
        return v;
    struct ep_key k = st->ep;
    k.role = ROLE_PROBE;
    return endpoint(&k);
}

// The agent's keep-warm probes (latency.h: agent_conns) -------------------------------

// A send on a client socket: if it is the agent's, remember the socket's local end.
static __always_inline void note_agent_conn(struct sock_state *st) {
    if (LOAD_ONCE(st->flags) & SOCK_AGENT_NOTED)
        return;
    int slot = CONFIG_AGENT_TGID;
    u32 *tgid = config.lookup(&slot);
    if (!tgid || *tgid == 0 || (u32)(bpf_get_current_pid_tgid() >> 32) != *tgid)
        return;
    struct probe_key k = {};
    __builtin_memcpy(k.addr, st->other, 16);
    k.port = st->other_port;
    u8 one = 1;
    agent_conns.update(&k, &one);
    __sync_fetch_and_or(&st->flags, SOCK_AGENT_NOTED);
}

// Whether a server socket's peer is one of the agent's connections (looked up once).
static __always_inline int from_agent(struct sock_state *st) {
    u64 flags = LOAD_ONCE(st->flags);
    if (flags & SOCK_AGENT_CHECKED)
        return (flags & SOCK_FROM_AGENT) != 0;
    struct probe_key k = {};
    __builtin_memcpy(k.addr, st->other, 16);
    k.port = st->other_port;
    int found = agent_conns.lookup(&k) != 0;
    __sync_fetch_and_or(&st->flags, SOCK_AGENT_CHECKED | (found ? SOCK_FROM_AGENT : 0));
    return found;
}

static __always_inline void count_keepwarm(struct sock_state *st, struct ep_val *s, int probe) {
    if (!probe && st->ep.role == ROLE_SERVER && from_agent(st))
        __sync_fetch_and_add(&s->keepwarm, 1);
}

// Whether an HTTP/2 connection's streams are the kubelet's gRPC probes (latency.h,
// ROLE_PROBE: by the node address and a gRPC-probed port, on a connection not the
// agent's); decided once per connection.
static __always_inline int h2_probe_conn(struct sock_state *st) {
    u64 flags = LOAD_ONCE(st->flags);
    if (flags & SOCK_H2_PROBE_CHECKED)
        return (flags & SOCK_H2_PROBE) != 0;
    int probe = 0;
    if (node_peer(st) && !from_agent(st)) {
        struct probe_paths *p = probe_paths_of(st);
        probe = p && p->grpc;
    }
    __sync_fetch_and_or(&st->flags, SOCK_H2_PROBE_CHECKED | (probe ? SOCK_H2_PROBE : 0));
    return probe;
}

// The endpoint an HTTP/2 connection's streams are recorded in (in flight, samples,
// statuses): the socket's, or its probes' for the kubelet's gRPC probe connections.
static __always_inline void h2_ep_key(struct sock_state *st, struct ep_key *k) {
    *k = st->ep;
    if (h2_probe_conn(st))
        k->role = ROLE_PROBE;
}

static __always_inline void complete_request(struct sock_state *st) {
    if (LOAD_ONCE(st->start_ns) == 0)
        return;  // idle: later bytes of a response already counted, or unseen start
    u64 start = __sync_lock_test_and_set(&st->start_ns, 0);
    if (start == 0)
        return;  // another CPU completed or aborted it first
    u64 now = bpf_ktime_get_ns();
    // Plain stores: only the CPU that closed the request gets here.
    st->idle_ns = now;
    st->requests += 1;
    int probe = take_probe(st);
    if (st->proto == APP_HTTP1)
        __sync_fetch_and_or(&st->flags, probe ? SOCK_STATUS_DUE | SOCK_STATUS_PROBE
                                              : SOCK_STATUS_DUE);
    struct ep_val *v = endpoint(&st->ep);
    if (!v)
        return;
    __sync_fetch_and_add(&v->rif, -1);
    struct ep_val *s = sample_endpoint(st, v, probe);
    if (s) {
        count_keepwarm(st, s, probe);
        record_sample(s, now > start ? (now - start) / 1000 : 0, st->proto);
    }
    count(CNT_REQUESTS_COMPLETED);
}

// A request still open when its connection ends (the client gave up, or either side
// reset) is a sample of the time it was open: a lower bound of its latency. Without
// it a pod that makes its clients time out would produce no samples at all and look
// unknown instead of slow. `aborted` counts these samples apart.
static __always_inline void abort_request(struct sock_state *st) {
    u64 start = __sync_lock_test_and_set(&st->start_ns, 0);
    if (start == 0)
        return;
    u64 now = bpf_ktime_get_ns();
    count(CNT_REQUESTS_ABORTED);
    int probe = take_probe(st);
    struct ep_val *v = endpoint(&st->ep);
    if (!v)
        return;
    __sync_fetch_and_add(&v->rif, -1);
    struct ep_val *s = sample_endpoint(st, v, probe);
    if (!s)
        return;
    __sync_fetch_and_add(&s->aborted, 1);
    count_keepwarm(st, s, probe);
    record_sample(s, now > start ? (now - start) / 1000 : 0, st->proto);
}

static __always_inline void set_v4_mapped(u8 *dst, const u8 *v4) {
    __builtin_memset(dst, 0, 10);
    dst[10] = 0xff;
    dst[11] = 0xff;
    dst[12] = v4[0];
    dst[13] = v4[1];
    dst[14] = v4[2];
    dst[15] = v4[3];
}

// tcp_sock's sequence numbers, where BTF gave their offsets (the loader passes all of
// aviator/agent/bpf/btf.py `tcp_offsets` or none): the hand-off iterator's unread bytes
// (handoff.h) and the HTTP/2 end at the peer's FIN (h2_streams.h).
#ifdef OFF_TCP_COPIED_SEQ
#define HAVE_TCP_SEQ 1
static __always_inline u32 tcp_seq(u64 sk, u32 off) {
    u32 seq = 0;
    bpf_probe_read_kernel(&seq, sizeof(seq), (const char *)sk + off);
    return seq;
}
#endif

// Inode of the network namespace of a socket (sk->__sk_common.skc_net.net->ns.inum).
static __always_inline u32 netns_of(u64 sk) {
    const char *net = 0;
    u32 inum = 0;
    bpf_probe_read_kernel(&net, sizeof(net), (const char *)sk + OFF_SKC_NET);
    if (net)
        bpf_probe_read_kernel(&inum, sizeof(inum), net + OFF_NET_NS_INUM);
    return inum;
}

static __always_inline int is_listening(const u8 *addr, u16 port) {
    struct listen_key k = {};
    k.port = port;
    __builtin_memcpy(k.addr, addr, 16);
    if (listeners.lookup(&k))
        return 1;
    __builtin_memset(k.addr, 0, 16);  // [::]
    if (listeners.lookup(&k))
        return 1;
    k.addr[10] = 0xff;  // 0.0.0.0 (v4-mapped)
    k.addr[11] = 0xff;
    if (listeners.lookup(&k))
        return 1;
    return 0;
}

// A socket seen for the first time mid-connection (older than the agent): it is a
// server socket if its local address:port is a listening one, a client otherwise.
static __always_inline struct sock_state *adopt(u64 sk, const u8 *laddr, u16 lport,
                                                const u8 *raddr, u16 rport) {
    struct sock_state st = {};
    if (is_listening(laddr, lport)) {
        st.ep.role = ROLE_SERVER;
        st.ep.port = lport;
        __builtin_memcpy(st.ep.addr, laddr, 16);
        st.other_port = rport;
        __builtin_memcpy(st.other, raddr, 16);
    } else {
        st.ep.role = ROLE_CLIENT;
        st.ep.port = rport;
        __builtin_memcpy(st.ep.addr, raddr, 16);
        st.other_port = lport;
        __builtin_memcpy(st.other, laddr, 16);
    }
    st.netns = netns_of(sk);
    st.idle_ns = bpf_ktime_get_ns();
    st.flags = SOCK_ADOPTED;
    if (sockets.insert(&sk, &st) == 0)
        count(CNT_SOCKETS_ADDED);
    return sockets.lookup(&sk);
}

static __always_inline void on_receive(struct sock_state *st) {
    if ((st->flags & SOCK_CLOSED) || PER_STREAM(st))
        return;
    if (st->ep.role == ROLE_SERVER)
        start_request(st);
    else
        complete_request(st);
}

// More of an answer after its first bytes (a response written in parts, a streamed
// body): the connection is idle only from its last byte out, or a hand-off would end it
// mid-answer (select.py: the quiet time). A clock read per send (not per segment);
// tracing programs may not read the cheaper coarse clock. A plain store: a racing one
// from another CPU writes a time as recent.
static __always_inline void answer_goes_on(struct sock_state *st) {
    st->idle_ns = bpf_ktime_get_ns();
}

// payload.h: whether this thread's send opens an HTTP/2 connection (the client
// preface; a server's SETTINGS).
static __always_inline int sends_h2_opening(int client);

static __always_inline void on_send(struct sock_state *st) {
    if ((st->flags & SOCK_CLOSED) || PER_STREAM(st))
        return;
    if (st->ep.role == ROLE_SERVER) {
        // An HTTP/2 server's SETTINGS, sent before it read the client's preface, does
        // not answer the request the preface's arrival started (the read cancels it).
        if (st->proto == APP_UNKNOWN && sends_h2_opening(0))
            return;
        if (LOAD_ONCE(st->start_ns) == 0) {
            answer_goes_on(st);
            return;
        }
        complete_request(st);
    } else {
        note_agent_conn(st);
        // Nor does the client preface start one: the server's SETTINGS could complete
        // it before this send's payload is read and the connection known as HTTP/2.
        if (st->proto == APP_UNKNOWN && sends_h2_opening(1))
            return;
        start_request(st);
    }
}

// A socket first seen in a hook without its addresses: read them from sock_common.
static __always_inline struct sock_state *adopt_from_sock(u64 sk) {
    const char *base = (const char *)sk;
    u8 state = 0;
    u16 family = 0;
    bpf_probe_read_kernel(&state, 1, base + OFF_SKC_STATE);
    if (state != STATE_ESTABLISHED)
        return 0;
    bpf_probe_read_kernel(&family, 2, base + OFF_SKC_FAMILY);
    u8 laddr[16] = {};
    u8 raddr[16] = {};
    if (family == FAMILY_INET) {
        u8 tmp[4];
        bpf_probe_read_kernel(tmp, 4, base + OFF_SKC_RCV_SADDR);
        set_v4_mapped(laddr, tmp);
        bpf_probe_read_kernel(tmp, 4, base + OFF_SKC_DADDR);
        set_v4_mapped(raddr, tmp);
    } else if (family == FAMILY_INET6) {
        bpf_probe_read_kernel(laddr, 16, base + OFF_SKC_V6_RCV_SADDR);
        bpf_probe_read_kernel(raddr, 16, base + OFF_SKC_V6_DADDR);
    } else {
        return 0;
    }
    u16 lport = 0;  // skc_num: host byte order
    u16 rport_be = 0;  // skc_dport: network byte order
    bpf_probe_read_kernel(&lport, 2, base + OFF_SKC_NUM);
    bpf_probe_read_kernel(&rport_be, 2, base + OFF_SKC_DPORT);
    u16 rport = (u16)((rport_be >> 8) | (rport_be << 8));
    return adopt(sk, laddr, lport, raddr, rport);
}

static __always_inline int handle_send(u64 sk) {
    count(CNT_TX_EVENTS);
    struct sock_state *st = sockets.lookup(&sk);
    if (!st) {
        if (!adopting())
            return 0;
        st = adopt_from_sock(sk);
        if (!st)
            return 0;
    }
    on_send(st);
    return 0;
}

#ifdef RECV_HOOK_RAW
// tcp_probe(sk, skb) as a raw tracepoint: the hottest hook (every segment received,
// pure ACKs included) without the cost of building the perf trace record. Payload
// length as the tracepoint computes it: skb->len minus the TCP header (skb->data
// points at it in tcp_rcv_established). sk_buff offsets come from BTF like the rest.
int on_tcp_probe(struct bpf_raw_tracepoint_args *ctx) {
    // The socket first: a segment of an HTTP/2 connection (timed per stream, from its
    // frames) or of a socket nobody tracks tells nothing here, and one lookup costs less
    // than the three reads that tell data from a pure ACK.
    u64 sk = (u64)ctx->args[0];
    struct sock_state *st = sockets.lookup(&sk);
    if (st ? (st->flags & SOCK_CLOSED) || PER_STREAM(st) : !adopting())
        return 0;
    const char *skb = (const char *)ctx->args[1];
    u32 len = 0;
    const u8 *th = 0;
    u8 doff = 0;
    bpf_probe_read_kernel(&len, sizeof(len), skb + OFF_SKB_LEN);
    bpf_probe_read_kernel(&th, sizeof(th), skb + OFF_SKB_DATA);
    bpf_probe_read_kernel(&doff, 1, th + 12);
    if (len <= (u32)(doff >> 4) * 4)
        return 0;
    count(CNT_RX_DATA_EVENTS);
    if (!st) {
        st = adopt_from_sock(sk);
        if (!st)
            return 0;
    }
    on_receive(st);
    return 0;
}
#else
// A data segment received on an ESTABLISHED socket.
TRACEPOINT_PROBE(tcp, tcp_probe) {
    if (args->data_len == 0)
        return 0;
    count(CNT_RX_DATA_EVENTS);
    u64 sk = (u64)args->skaddr;
    struct sock_state *st = sockets.lookup(&sk);
    if (!st) {
        if (!adopting())
            return 0;
        // saddr/daddr are sockaddr_in / sockaddr_in6 of the local / remote end.
        u8 laddr[16] = {};
        u8 raddr[16] = {};
        u8 tmp[4];
        u16 family = args->family;
        if (family == FAMILY_INET) {
            bpf_probe_read_kernel(tmp, 4, &args->saddr[4]);
            set_v4_mapped(laddr, tmp);
            bpf_probe_read_kernel(tmp, 4, &args->daddr[4]);
            set_v4_mapped(raddr, tmp);
        } else if (family == FAMILY_INET6) {
            bpf_probe_read_kernel(laddr, 16, &args->saddr[8]);
            bpf_probe_read_kernel(raddr, 16, &args->daddr[8]);
        } else {
            return 0;
        }
        st = adopt(sk, laddr, args->sport, raddr, args->dport);
        if (!st)
            return 0;
    }
    on_receive(st);
    return 0;
}
#endif

#ifdef SEND_HOOK_RAW
// tcp_sendmsg_locked(sk, msg, skb, size_goal): fires in the copy loop, before the data
// is pushed, once per skb touched; the first one of a response completes the request.
int on_tcp_sendmsg_locked(struct bpf_raw_tracepoint_args *ctx) {
    return handle_send((u64)ctx->args[0]);
}
#endif

#include "h2.h"
#include "payload.h"

static __always_inline void listen_key_from_args(struct listen_key *k, u16 family,
                                                 const u8 *v4, const u8 *v6, u16 port) {
    k->port = port;
    if (family == FAMILY_INET)
        set_v4_mapped(k->addr, v4);
    else
        __builtin_memcpy(k->addr, v6, 16);
}

// Roles from the handshake; listeners tracked live; requests open when a connection
// leaves ESTABLISHED are aborted (the peer or the socket gave up on them).
TRACEPOINT_PROBE(sock, inet_sock_set_state) {
    if (args->protocol != PROTO_TCP)
        return 0;
    if (args->family != FAMILY_INET && args->family != FAMILY_INET6)
        return 0;
    count(CNT_STATE_EVENTS);
    u64 sk = (u64)args->skaddr;
    int oldstate = args->oldstate;
    int newstate = args->newstate;
    u8 v4[4];
    u8 v6[16];

    if (newstate == STATE_LISTEN) {
        struct listen_key k = {};
        bpf_probe_read_kernel(v4, 4, args->saddr);
        bpf_probe_read_kernel(v6, 16, args->saddr_v6);
        listen_key_from_args(&k, args->family, v4, v6, args->sport);
        u8 one = 1;
        listeners.update(&k, &one);
        return 0;
    }

    if (newstate == STATE_ESTABLISHED &&
        (oldstate == STATE_SYN_SENT || oldstate == STATE_SYN_RECV)) {
        struct sock_state st = {};
        u8 o4[4];
        u8 o6[16];
        if (oldstate == STATE_SYN_RECV) {
            st.ep.role = ROLE_SERVER;
            st.ep.port = args->sport;
            st.other_port = args->dport;
            bpf_probe_read_kernel(v4, 4, args->saddr);
            bpf_probe_read_kernel(v6, 16, args->saddr_v6);
            bpf_probe_read_kernel(o4, 4, args->daddr);
            bpf_probe_read_kernel(o6, 16, args->daddr_v6);
        } else {
            st.ep.role = ROLE_CLIENT;
            st.ep.port = args->dport;
            st.other_port = args->sport;
            bpf_probe_read_kernel(v4, 4, args->daddr);
            bpf_probe_read_kernel(v6, 16, args->daddr_v6);
            bpf_probe_read_kernel(o4, 4, args->saddr);
            bpf_probe_read_kernel(o6, 16, args->saddr_v6);
        }
        if (args->family == FAMILY_INET) {
            set_v4_mapped(st.ep.addr, v4);
            set_v4_mapped(st.other, o4);
        } else {
            __builtin_memcpy(st.ep.addr, v6, 16);
            __builtin_memcpy(st.other, o6, 16);
        }
        st.netns = netns_of(sk);
        st.idle_ns = bpf_ktime_get_ns();
        // Overwrite: the address of a freed socket may be reused by a new one.
        sockets.update(&sk, &st);
        count(CNT_SOCKETS_ADDED);
        return 0;
    }

    if (oldstate != STATE_ESTABLISHED && newstate != STATE_CLOSE)
        return 0;
    struct sock_state *st = sockets.lookup(&sk);
    if (!st)
        return 0;
    if (oldstate == STATE_ESTABLISHED)
        __sync_fetch_and_or(&st->flags, SOCK_CLOSED);
    abort_request(st);
    if (newstate == STATE_CLOSE) {
        // The h2 sweep reads the socket's endpoint from its own copy.
        struct sock_state copy = *st;
        if (sockets.delete(&sk) == 0)
            count(CNT_SOCKETS_REMOVED);
        h2_close(args, sk, &copy);
    } else if (newstate == STATE_CLOSE_WAIT) {
        h2_peer_closed(args, sk, st);
    } else {
        h2_close(args, sk, st);
    }
    return 0;
}

TRACEPOINT_PROBE(tcp, tcp_destroy_sock) {
    count(CNT_DESTROY_EVENTS);
    u64 sk = (u64)args->skaddr;
    struct sock_state *st = sockets.lookup(&sk);
    if (st) {
        abort_request(st);
        struct sock_state copy = *st;
        if (sockets.delete(&sk) == 0)
            count(CNT_SOCKETS_REMOVED);
        h2_close(args, sk, &copy);
    }
    return 0;
}

#ifdef HAVE_TCP_SEQ
#include "handoff.h"
#endif
