// SPDX-License-Identifier: GPL-2.0
//
// The bytes of a TCP connection at the syscall boundary: what the application hands to
// send and what it takes from receive. Used for the protocol of a connection (its
// first client bytes), the HTTP/1 status line, the HTTP/1 request target on connections
// the kubelet may probe (http1_target_run: latency.h, ROLE_PROBE), and HTTP/2 frames
// (h2.h).
//
// The user buffer of read/readv/recvfrom/recvmsg and write/writev/sendto/sendmsg is
// stashed per thread at the syscall's entry; sock:sock_recv_length and
// sock:sock_send_length fire inside the same syscall, after the copy, with the socket
// and the byte count, and consume the stash (read() and write() on a socket reach
// them through sock_recvmsg and sock_sendmsg too). Peeks (MSG_PEEK) are skipped: their
// bytes are read again; so are reads of the error queue (MSG_ERRQUEUE: timestamps,
// not stream bytes). The stash is not cleared at syscall exit (that would double
// the hooks on every read and write of the node): a syscall on something else leaves
// one behind until the thread's next hooked syscall overwrites it (the stash is the
// thread's own storage, freed with it). Bytes moved by paths with no hooked syscall (recvmmsg/sendmmsg,
// sendfile/splice, io_uring) are not seen: an HTTP/2 connection using them loses its
// parser's place (h2.h gives it up) and so could, in the rare case of such a path
// following a stashed syscall of the same thread that reached no socket, read the
// stale buffer.
//
// A connection's protocol is decided by its first client bytes (the server's on a
// server socket received, the client's on a client socket sent): the HTTP/2 client
// preface -> APP_H2 (the connection-level request its arrival started on the server
// side is cancelled; on the client side its send starts none, see on_send), an HTTP/1 method token -> APP_HTTP1, anything else -> APP_OPAQUE. A server
// that speaks first with a SETTINGS frame (HTTP/2 servers do not wait for the preface)
// gets a parser before the preface arrives; any other server-first bytes make the
// connection opaque. Connections older than the program (adopted mid-stream) are
// decided the same way on their next bytes, and are HTTP/2 also when those bytes are
// whole HTTP/2 frames (h2_chain), in either direction; one whose bytes are neither stays
// undecided for its next H2_CHAIN_TRIES calls before it is opaque. Streams opened before
// are then not timed, the ones opened after are.

#define STASH_NONE 0    // consumed
#define STASH_BUF 3     // one buffer, `len` bytes
#define STASH_IOV 1     // `buf` is a struct iovec array of `len` entries
#define STASH_MSGHDR 2  // `buf` is a struct user_msghdr

struct stash {
    u64 buf;
    u64 len;
    u32 kind;
    u32 sending;
};

// Task-local storage: reached from the task itself, without hashing (every read and
// write of the node stashes), created on a thread's first hooked syscall and freed
// with the thread.
BPF_TASK_STORAGE(stashes, struct stash);

// This thread's stash; created when `create` and missing (0 if it cannot be).
static __always_inline struct stash *stash_of(int create) {
    return stashes.task_storage_get(bpf_get_current_task_btf(), 0,
                                    create ? BPF_LOCAL_STORAGE_GET_F_CREATE : 0);
}

static __always_inline void stash(u64 buf, u64 len, u32 kind, u32 sending) {
    struct stash *p = stash_of(1);
    if (!p)
        return;
    p->buf = buf;
    p->len = len;
    p->kind = kind;
    p->sending = sending;
}

// Up to 16 first bytes of the call into b (32 bytes); how many.
static __always_inline u32 first_bytes(struct h2_cursor *c, u8 *b) {
    u32 n = c->cur_len;
    if (n == 0 && c->iov) {
        // An iovec call starts with its first non-empty iovec (read without moving the
        // cursor: the parser walks them itself).
        struct {
            u64 base;
            u64 len;
        } v = {};
        bpf_probe_read_user(&v, sizeof(v), (const void *)c->iov);
        u32 take = v.len < c->left ? (u32)v.len : c->left;
        if (take > 16)
            take = 16;
        if (take == 0)
            return 0;
        bpf_probe_read_user(b, BOUNDED(take, 31), (const void *)v.base);
        return take;
    }
    if (n > 16)
        n = 16;
    if (n == 0)
        return 0;
    bpf_probe_read_user(b, BOUNDED(n, 31), (const void *)c->cur);
    return n;
}

static __always_inline int is_settings_header(const u8 *b) {
    u32 len = ((u32)b[0] << 16) | ((u32)b[1] << 8) | b[2];
    return b[3] == H2_SETTINGS && b[4] == 0 && (b[5] | b[6] | b[7] | b[8]) == 0 &&
           len % 6 == 0;
}

// Whether this thread's send (stashed, its payload not read yet) opens an HTTP/2
// connection: the client preface (`client`), or a server's SETTINGS frame.
static __always_inline int sends_h2_opening(int client) {
    struct stash *p = stash_of(0);
    if (!p || p->kind == STASH_NONE || !p->sending)
        return 0;
    u64 buf = p->buf;
    if (p->kind != STASH_BUF) {
        if (p->kind == STASH_MSGHDR)
            bpf_probe_read_user(&buf, sizeof(buf), (const void *)(buf + 16));  // msg_iov
        bpf_probe_read_user(&buf, sizeof(buf), (const void *)buf);  // iov[0].iov_base
    }
    u8 b[16] = {};
    if (bpf_probe_read_user(b, 9, (const void *)buf) != 0)
        return 0;
    if (client)
        return *(u64 *)b == 0x5448202a20495250ULL;  // "PRI * HT"
    return is_settings_header(b);
}

#define WORD(a, b, c, d) ((u32)(a) | (u32)(b) << 8 | (u32)(c) << 16 | (u32)(d) << 24)

static __always_inline int is_http1_method(u32 w) {
    return w == WORD('G', 'E', 'T', ' ') || w == WORD('P', 'O', 'S', 'T') ||
           w == WORD('P', 'U', 'T', ' ') || w == WORD('H', 'E', 'A', 'D') ||
           w == WORD('D', 'E', 'L', 'E') || w == WORD('O', 'P', 'T', 'I') ||
           w == WORD('P', 'A', 'T', 'C') || w == WORD('C', 'O', 'N', 'N') ||
           w == WORD('T', 'R', 'A', 'C');
}

// "HTTP/1.x NNN" at the start of the first response bytes.
static __always_inline void http1_status(struct sock_state *st, struct h2_cursor *c) {
    u8 b[32] = {};
    if (first_bytes(c, b) < 12)
        return;
    if (*(u32 *)b != WORD('H', 'T', 'T', 'P') || b[4] != '/' || b[8] != ' ')
        return;
    u32 status = 0;
    for (int k = 9; k < 12; k++) {
        if (b[k] < '0' || b[k] > '9')
            return;
        status = status * 10 + (b[k] - '0');
    }
    if (status >= 100 && status <= 599) {
        struct ep_key k = st->ep;
        if (st->flags & SOCK_STATUS_PROBE)
            k.role = ROLE_PROBE;
        count_status(endpoint(&k), status, 0);
    }
}

#define TARGET_PEEK 80  // "OPTIONS " + PROBE_PATH_MAX bytes + the space after fit

// The request line's target, read from the client's bytes of an HTTP/1 request on a
// socket the kubelet may probe (probe_candidate), across as many reads as it takes
// (the state is the socket's: path_state, path_len, path_hash). When the target ends
// and it hashes to one of its endpoint's probe paths, the request is a probe
// (SOCK_PROBE). Only the call's first buffer (or iovec) is read: a target that goes on
// past it, or past TARGET_PEEK bytes, is done and is no probe's.
static __always_inline void http1_target(struct sock_state *st, struct h2_cursor *c) {
    u32 state = st->path_state;
    if (state == PATH_DONE)
        return;
    u8 b[128] = {};
    u64 base = c->cur;
    u32 n = c->cur_len;
    u32 whole = n;  // the call's bytes
    if (c->iov) {
        struct {
            u64 base;
            u64 len;
        } v = {};
        bpf_probe_read_user(&v, sizeof(v), (const void *)c->iov);
        base = v.base;
        whole = c->left;
        n = v.len < c->left ? (u32)v.len : c->left;
    }
    u32 seen = n;
    if (n > TARGET_PEEK)
        n = TARGET_PEEK;
    if (n == 0 || bpf_probe_read_user(b, BOUNDED(n, 127) & 0x7f, (const void *)base) != 0) {
        st->path_state = PATH_DONE;  // not read: the address and port decide
        return;
    }
    u32 hash = state == PATH_IDLE ? PATH_HASH_OFFSET : st->path_hash;
    u32 len = state == PATH_IDLE ? 0 : st->path_len;
    if (state == PATH_IDLE)
        state = PATH_METHOD;
    int ended = 0;
    // Both bounds stay in the loop (clang would fold them into one the verifier cannot
    // follow) and the index is masked on the register that indexes.
    asm volatile("" : "+r"(n));
#pragma clang loop unroll(disable)
    for (int i = 0; i < TARGET_PEEK; i++) {
        if (i >= n)
            break;
        u8 ch = b[BOUNDED(i, 127)];
        if (state == PATH_METHOD) {
            if (ch == ' ')
                state = PATH_TARGET;
            continue;
        }
        if (ch == ' ' || ch == '\r' || ch == '\n') {
            ended = 1;
            break;
        }
        if (len >= PROBE_PATH_MAX) {
            len = PROBE_PATH_MAX + 1;  // too long for a probe's
            ended = 1;
            break;
        }
        hash = (hash ^ ch) * PATH_HASH_PRIME;
        len += 1;
    }
    if (!ended && (n < seen || seen < whole)) {
        len = PROBE_PATH_MAX + 1;  // goes on where this call's first chunk does not
        ended = 1;
    }
    st->path_hash = hash;
    st->path_len = len > 255 ? 255 : len;
    if (!ended) {
        st->path_state = state;
        return;
    }
    st->path_state = PATH_DONE;
    if (state != PATH_TARGET || len == 0 || len > PROBE_PATH_MAX)
        return;
    struct probe_paths *p = probe_paths_of(st);
    if (!p)
        return;
    for (int i = 0; i < PROBE_PATHS; i++) {
        if (i < p->count && p->hashes[i] == hash) {
            __sync_fetch_and_or(&st->flags, SOCK_PROBE);
            return;
        }
    }
}

#define H2_CHAIN_STEPS 32  // frame headers, payload skips and iovec moves looked at
#define H2_CHAIN_TRIES 8   // calls of an adopted connection looked at before it is opaque

// Whether the call's bytes are HTTP/2 frames: frame headers of known types with the
// spec's shapes, one after the other through the call's buffer or its iovecs (writers
// such as gRPC C-core put a frame's header and its payload in iovecs of their own),
// the last ending exactly at the call's end, or at least two when the call ends inside
// a frame or there are more than the steps look at (many frames in one call). How an
// HTTP/2 connection older than the program is recognised mid-stream: reads and writes
// of event-driven peers start at a frame (writers write whole frames; readers drain
// what came).
// h2_chain's place; per CPU, in a map so that the verifier does not follow every value
// each step could leave (it explores the loop once per distinct state otherwise).
struct h2_walk {
    u64 base;
    u32 len;
    u32 left;
    u32 iov_i;
    u32 pos;
    u32 skip;
    u32 frames;
};
BPF_PERCPU_ARRAY(h2_walks, struct h2_walk, 1);

static __always_inline int h2_chain(struct h2_cursor *c) {
    int zero = 0;
    struct h2_walk *w = h2_walks.lookup(&zero);
    if (!w)
        return 0;
    w->base = c->cur;
    w->len = c->cur_len;
    w->left = c->left;
    w->iov_i = 0;
    w->pos = 0;
    w->skip = 0;
    w->frames = 0;
    for (int i = 0; i < H2_CHAIN_STEPS; i++) {
        u32 pos = w->pos;
        u32 len = w->len;
        if (pos >= len) {
            u32 left = w->left;
            u32 iov_i = w->iov_i;
            if (c->iov == 0 || left == 0 || iov_i >= c->iovcnt || iov_i >= H2_MAX_IOV)
                break;  // the call's end
            struct {
                u64 base;
                u64 len;
            } v = {};
            bpf_probe_read_user(&v, sizeof(v), (const void *)(c->iov + (u64)iov_i * 16));
            w->iov_i = iov_i + 1;
            w->base = v.base;
            len = v.len < left ? (u32)v.len : left;
            w->len = len;
            w->left = left - len;
            w->pos = 0;
            continue;
        }
        u32 avail = len - pos;
        u32 skip = w->skip;
        if (skip) {
            u32 n = skip < avail ? skip : avail;
            w->skip = skip - n;
            w->pos = pos + n;
            continue;
        }
        if (avail < 9)
            return w->frames > 1;  // a frame header split over iovecs
        u8 b[16] = {};
        if (bpf_probe_read_user(b, 9, (const void *)(w->base + pos)))
            return 0;
        u32 flen = ((u32)b[0] << 16) | ((u32)b[1] << 8) | b[2];
        u32 sid = ((u32)b[5] << 24) | ((u32)b[6] << 16) | ((u32)b[7] << 8) | b[8];
        if (b[3] > H2_CONTINUATION || (b[5] & 0x80) || flen > (1 << 20) ||
            !h2_plausible(flen, b[3], sid))
            return 0;
        w->frames += 1;
        w->skip = flen;
        w->pos = pos + 9;
    }
    u32 at_end = w->pos >= w->len && (c->iov == 0 || w->left == 0);
    // Ended exactly at a frame's end: one frame will do; else two in a row.
    return at_end && w->skip == 0 ? w->frames > 0 : w->frames > 1;
}

// An adopted connection whose call was not recognised: opaque only after
// H2_CHAIN_TRIES such calls (its first read may start inside a frame the program did
// not see begin); 1 if it is decided now.
static __always_inline int adopted_undecided(struct sock_state *st) {
    if (!(st->flags & SOCK_ADOPTED))
        return 0;
    u64 tries = (__sync_fetch_and_add(&st->flags, SOCK_TRY) & SOCK_TRIES) / SOCK_TRY;
    return tries + 1 < H2_CHAIN_TRIES;
}

// The connection is HTTP/2 from now on: its connection-level request is undone and
// it gets a parser; 1 if it has one (the cursor is then to be parsed). The protocol is
// set before the undo: a request a segment on another CPU starts meanwhile is undone
// here or, when it starts after this undo, by its own start (start_request).
static __always_inline int become_h2(u64 sk, struct sock_state *st, u32 preface) {
    struct h2_conn *h = h2_conn_create(sk, st);
    st->proto = APP_H2;
    cancel_request(st);
    if (!h) {
        __sync_fetch_and_or(&st->flags, SOCK_UNPARSED);
        return 0;
    }
    if (preface)
        h->dir[0].skip = H2_PREFACE_LEN;
    return 1;
}

// The first client bytes of a connection decide its protocol; 1 if it is HTTP/2 (the
// cursor is then to be parsed). `chain`: the call is whole frames of an adopted
// connection (h2_chain).
static __always_inline int detect(u64 sk, struct sock_state *st, struct h2_cursor *c,
                                  int chain) {
    u8 b[32] = {};
    u32 n = first_bytes(c, b);
    u32 w = n >= 4 ? *(u32 *)b : 0;
    if (w == WORD('P', 'R', 'I', ' '))
        return become_h2(sk, st, 1);
    if (n >= 4 && is_http1_method(w)) {
        st->proto = APP_HTTP1;
    } else if (chain) {
        return become_h2(sk, st, 0);
    } else if (adopted_undecided(st)) {
        return 0;
    } else {
        st->proto = APP_OPAQUE;
    }
    h2conns.delete(&sk);  // a parser made for a server's SETTINGS, if any
    return 0;
}

// Server bytes before any client bytes: an HTTP/2 server's SETTINGS gets a parser (the
// client's preface decides), and whole frames on a connection older than the program
// make it HTTP/2 at once.
static __always_inline int server_first(u64 sk, struct sock_state *st, struct h2_cursor *c,
                                        int chain) {
    if (h2conns.lookup(&sk))
        return 1;
    u8 b[32] = {};
    if (first_bytes(c, b) >= 9 && is_settings_header(b) && !(st->flags & SOCK_ADOPTED))
        return h2_conn_create(sk, st) != 0;
    if (chain)
        return become_h2(sk, st, 0);
    if (!adopted_undecided(st))
        st->proto = APP_OPAQUE;
    return 0;
}

// Whether an HTTP/1 connection's client bytes may hold a probe's target: a server
// socket whose peer is a node address or not looked up yet (flags only: the lookups are
// http1_target_run's).
#define MAY_BE_PROBED(st) ((st)->ep.role == ROLE_SERVER && \
    ((st)->flags & (SOCK_PEER_CHECKED | SOCK_NODE_PEER)) != SOCK_PEER_CHECKED)

// The tail-call target for the first bytes of an adopted connection: is it HTTP/2
// (h2_chain), HTTP/1, or still undecided? Parsing goes on in h2_parse_more;
// an HTTP/1 request's target is read in http1_target_run.
int h2_adopt_more(void *ctx) {
    int zero = 0;
    struct h2_cursor *c = h2_cursors.lookup(&zero);
    if (!c || !c->active)
        return 0;
    u64 sk = c->sk;
    struct sock_state *st = sockets.lookup(&sk);
    if (st && st->proto == APP_UNKNOWN) {
        int chain = h2_chain(c);
        if (c->dir == 0 ? detect(sk, st, c, chain) : server_first(sk, st, c, chain))
            h2_progs.call(ctx, H2_PROG_PARSE);
        else if (c->dir == 0 && st->proto == APP_HTTP1 && MAY_BE_PROBED(st)) {
            c->active = 0;
            h2_progs.call(ctx, PROG_HTTP1_TARGET);
        }
    }
    c->active = 0;
    return 0;
}

// A tail call of on_payload (its own program: the target's reader does not fit in
// on_payload's instruction budget): the cursor's bytes are an HTTP/1 request's.
int http1_target_run(void *ctx) {
    int zero = 0;
    struct h2_cursor *c = h2_cursors.lookup(&zero);
    if (!c)
        return 0;
    u64 sk = c->sk;
    struct sock_state *st = sockets.lookup(&sk);
    if (st && probe_candidate(st))
        http1_target(st, c);
    return 0;
}

static __always_inline int on_payload(void *ctx, u64 sk, int ret, int flags, u32 sending) {
    struct stash *p = stash_of(0);
    if (!p || p->kind == STASH_NONE)
        return 0;
    struct stash s = *p;
    p->kind = STASH_NONE;
    if (s.sending != sending || ret <= 0 ||
        (!sending && (flags & (MSG_PEEK_FLAG | MSG_ERRQUEUE_FLAG))))
        return 0;
    struct sock_state *st = sockets.lookup(&sk);
    if (!st || (st->flags & SOCK_UNPARSED))
        return 0;
    // An HTTP/2 connection is parsed past the peer's FIN: its last answers are read (and
    // may be sent) after it (h2_streams.h: h2_peer_closed).
    if ((st->flags & SOCK_CLOSED) && !PER_STREAM(st))
        return 0;
    u8 proto = st->proto;
    if (proto == APP_OPAQUE)
        return 0;
    u32 client_bytes = (st->ep.role == ROLE_SERVER) != sending;
    if (proto == APP_HTTP1 && !(client_bytes ? MAY_BE_PROBED(st)
                                             : (st->flags & SOCK_STATUS_DUE)))
        return 0;
    count(CNT_PAYLOAD_EVENTS);

    int zero = 0;
    struct h2_cursor *c = h2_cursors.lookup(&zero);
    if (!c)
        return 0;
    c->sk = sk;
    c->now = 0;
    c->left = (u32)ret;
    c->pos = 0;
    c->iov_i = 0;
    c->runs = 0;
    c->win_len = 0;
    c->dir = client_bytes ? 0 : 1;
    if (s.kind == STASH_MSGHDR) {
        // struct user_msghdr: msg_iov at 16, msg_iovlen at 24.
        u64 iov_and_len[2] = {};
        bpf_probe_read_user(iov_and_len, sizeof(iov_and_len), (const void *)(s.buf + 16));
        s.buf = iov_and_len[0];
        s.len = iov_and_len[1];
        s.kind = STASH_IOV;
    }
    if (s.kind == STASH_IOV) {
        c->iov = s.buf;
        c->iovcnt = s.len > H2_MAX_IOV ? H2_MAX_IOV + 1 : (u32)s.len;
        c->cur = 0;
        c->cur_len = 0;
    } else {
        c->iov = 0;
        c->iovcnt = 0;
        c->cur = s.buf;
        c->cur_len = s.len < (u64)ret ? (u32)s.len : (u32)ret;
        c->left = 0;
    }

    if (proto == APP_UNKNOWN) {
        if (st->flags & SOCK_ADOPTED) {
            // Walking the call's frames is a program of its own (the verifier's budget).
            c->active = 1;
            h2_progs.call(ctx, H2_PROG_ADOPT);
            c->active = 0;
            return 0;
        }
        if (!client_bytes) {
            if (!server_first(sk, st, c, 0))
                return 0;
        } else if (!detect(sk, st, c, 0)) {
            // The first request's target is in these bytes too.
            if (st->proto != APP_HTTP1 || !MAY_BE_PROBED(st))
                return 0;
            proto = APP_HTTP1;
        }
    }
    if (proto == APP_HTTP1) {
        if (client_bytes) {
            h2_progs.call(ctx, PROG_HTTP1_TARGET);  // http1_target_run
            return 0;
        }
        http1_status(st, c);
        __sync_fetch_and_and(&st->flags, ~(u64)(SOCK_STATUS_DUE | SOCK_STATUS_PROBE));
        return 0;
    }
    // The parser runs in its own program (the verifier's budget of this one).
    c->active = 1;
    h2_progs.call(ctx, H2_PROG_PARSE);
    c->active = 0;
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_read) {
    stash((u64)args->buf, args->count, STASH_BUF, 0);
    return 0;
}
TRACEPOINT_PROBE(syscalls, sys_enter_recvfrom) {
    stash((u64)args->ubuf, args->size, STASH_BUF, 0);
    return 0;
}
TRACEPOINT_PROBE(syscalls, sys_enter_readv) {
    stash((u64)args->vec, args->vlen, STASH_IOV, 0);
    return 0;
}
TRACEPOINT_PROBE(syscalls, sys_enter_recvmsg) {
    stash((u64)args->msg, 0, STASH_MSGHDR, 0);
    return 0;
}
TRACEPOINT_PROBE(syscalls, sys_enter_write) {
    stash((u64)args->buf, args->count, STASH_BUF, 1);
    return 0;
}
TRACEPOINT_PROBE(syscalls, sys_enter_sendto) {
    stash((u64)args->buff, args->len, STASH_BUF, 1);
    return 0;
}
TRACEPOINT_PROBE(syscalls, sys_enter_writev) {
    stash((u64)args->vec, args->vlen, STASH_IOV, 1);
    return 0;
}
TRACEPOINT_PROBE(syscalls, sys_enter_sendmsg) {
    stash((u64)args->msg, 0, STASH_MSGHDR, 1);
    return 0;
}

TRACEPOINT_PROBE(sock, sock_recv_length) {
    if (args->protocol != PROTO_TCP)
        return 0;
    return on_payload(args, (u64)args->sk, args->ret, args->flags, 0);
}

// Also the send hook on kernels without the raw tcp_sendmsg_locked tracepoint: then it
// marks sends for the connection-level requests first (later than the first bytes
// leave by the time the copy and push took).
TRACEPOINT_PROBE(sock, sock_send_length) {
    if (args->protocol != PROTO_TCP)
        return 0;
    if (args->family != FAMILY_INET && args->family != FAMILY_INET6)
        return 0;
#ifndef SEND_HOOK_RAW
    if (args->ret > 0)
        handle_send((u64)args->sk);
#endif
    return on_payload(args, (u64)args->sk, args->ret, args->flags, 1);
}
