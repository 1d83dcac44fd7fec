// SPDX-License-Identifier: GPL-2.0
//
// Hand-off from inside the kernel: an idle connection ended under its socket's lock.
//
// User space (aviator/agent/handoff) names the connections of a pod to end by their
// cookies in `handoff_orders`, then runs this iterator over the TCP sockets of the
// pod's network namespace (a bpf_iter of target "tcp", created there). The kernel
// calls it for each socket with that socket locked, so no segment is added to it
// while the program looks: a request whose first segment has arrived is seen (the
// receive hook marked the connection busy, or its bytes wait unread), and one that
// arrives after meets a closed socket. From user space, a look and then a destroy
// are two steps, and a request arriving between them was cut; here the only such
// request is one still on the wire, as with any server that closes an idle
// keep-alive connection.
//
// The kfunc bpf_sock_destroy (Linux 6.5+) resets the connection as SOCK_DESTROY does.
// BCC cannot compile a kfunc call: the program calls helper KFUNC_PLACEHOLDER, which
// the loader rewrites (aviator/agent/bpf/iterend.py). Without the kfunc, the BTF
// offsets below or BPF iterators, the agent ends connections through sock_diag.

// The iterator's context, as net/ipv4/tcp_ipv4.c defines it (no kernel header has it).
struct bpf_iter_meta__aviator {
    void *seq;
    u64 session_id;
    u64 seq_num;
};
struct bpf_iter__tcp {
    struct bpf_iter_meta__aviator *meta;
    struct sock_common *sk_common;
    uid_t uid;
};

BPF_HASH(handoff_orders, u64, struct handoff_order, MAX_HANDOFF_ORDERS);

static long (*sock_destroy_kfunc)(struct sock_common *sk) = (void *)KFUNC_PLACEHOLDER;

BPF_ITER(tcp) {
    struct sock_common *skc = ctx->sk_common;
    if (!skc)
        return 0;
    u64 cookie = bpf_get_socket_cookie(skc);
    struct handoff_order *order = handoff_orders.lookup(&cookie);
    if (!order || order->outcome != HANDOFF_PENDING)
        return 0;
    u64 sk = (u64)skc;
    struct sock_state *st = sockets.lookup(&sk);
    if (!st) {
        // Not a connection the program follows (a TIME_WAIT socket keeps its cookie).
        order->outcome = HANDOFF_UNTRACKED;
        return 0;
    }
    // Quiet as user space's select.is_quiet says: no request or stream open, for long
    // enough (a client reading an answer may be about to send its next request).
    if (st->start_ns != 0 || st->streams > 0 ||
        bpf_ktime_get_ns() - st->idle_ns < order->quiet_ns) {
        order->outcome = HANDOFF_BUSY;
        return 0;
    }
    // Bytes received and not read yet: an HTTP/2 request is seen only when read.
    if (tcp_seq(sk, OFF_TCP_RCV_NXT) != tcp_seq(sk, OFF_TCP_COPIED_SEQ)) {
        order->outcome = HANDOFF_UNREAD;
        return 0;
    }
    long err = sock_destroy_kfunc(skc);
    order->outcome = err ? err : HANDOFF_ENDED;
    return 0;
}
