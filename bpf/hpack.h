// SPDX-License-Identifier: GPL-2.0
//
// Response statuses from the server's HTTP/2 header blocks (HPACK, RFC 7541), read by
// walking every field of every block the server sends (HEADERS, CONTINUATION,
// PUSH_PROMISE) without a full decoder: field representations, integers and string
// lengths are parsed, and only the strings that matter are looked at (names
// ":status", "grpc-status", "content-type", plain or Huffman-coded, and their
// values). Included by h2.h (uses struct h2_cursor and count_status); no maps.
//
// The dynamic table is followed by counting insertions (every literal with
// incremental indexing): index 62 + k is the entry inserted k insertions before the
// latest one, whatever was evicted (an encoder only refers to entries still in its
// table, and an entry too large for the table empties it, so nothing older is
// referred to again). The entries that hold one of the three fields are remembered
// (struct hpack_state: the last HPACK_RECS of them); a reference to any other entry is
// a field that does not matter. So a repeated 503, or grpc-status 14 from the
// encoder's dynamic table, is read exactly, and so is a field split across reads,
// writes, iovecs or CONTINUATION frames (the walk carries its place).
//
// The parser (h2.h) hands a header-carrying frame's payload to hpack_step, one step of
// its budget at a time: up to HP_BYTES bytes read at once and walked to the first
// event (an integer or a string complete), which is acted on once per step; strings
// that do not matter are skipped without reading them. (The verifier explores the
// step for every parser step of a run: a walk acting on its events byte by byte is
// more than it accepts.)
//
// What a block counts (at its end; hp.role says what the block is):
//   a response's first HEADERS: its :status (an error when >= 500), unless the
//     response is gRPC (content-type application/grpc, :status 200): then its status
//     is its grpc-status, in the same block when it ends the stream (Trailers-Only)
//     or in the trailers;
//   trailers (a later HEADERS ending the stream): grpc-status (an error when != 0).
// A block whose status is not read (not there, a reference to an entry no longer
// remembered, a malformed block) counts in CNT_STATUSES_UNREAD and in none of the
// endpoint's `statuses`: an unread status is never taken for a success (nor is a
// :status 200 in a block with a reference not known: it may be a gRPC response's).
//
// A short block the walk read whole (one HEADERS frame of at most 8 bytes, nothing
// added to the table) is remembered with what it read, the last response block and
// the last trailers (struct hpack_memo): a block with the same bytes and no insertion
// since reads the same (a steady-state encoder's indexed :status 200, content-type and
// grpc-status 0). The full parser reads such a block from the memo instead of walking
// it (hpack_frame: exact, and one parser step for the frame instead of one per field).
// Blocks the parser skims (h2.h: a call beyond the full parser's budget) are not
// walked: one that repeats the memo reads the same too. Another skimmed block of indexed
// fields only adds nothing to the table: its static :status other than 200 is read,
// the rest is unread. Any other skimmed block may have added entries: the table is
// not followed any more (`broken`), static entries still are.

// hp.state: what the next byte of the block is.
#define HP_FIELD 0   // a field's first byte
#define HP_INT 1     // a continuation byte of an integer
#define HP_STRLEN 2  // a string's first byte (Huffman bit, length)
#define HP_STR 3     // a byte of a string
#define HP_LOST 4    // malformed: the rest of the block is skipped

// hp.int_for: what the integer being read is.
#define INT_INDEX 0   // an indexed field's index
#define INT_NAME 1    // a literal's name index (0: a new name follows)
#define INT_SIZE 2    // a dynamic table size update
#define INT_STRLEN 3  // a string's length

// hp.rep: the field's representation.
#define REP_INDEXED 0
#define REP_INCREMENTAL 1  // a literal added to the dynamic table
#define REP_LITERAL 2      // without indexing or never indexed
#define REP_SIZE 3

// What a field's name is (hp.kind, hpack_rec.kind).
#define KIND_NONE 0
#define KIND_STATUS 1
#define KIND_GRPC 2
#define KIND_CTYPE 3
#define KIND_LOST 4  // a reference to an entry no longer remembered

// hp.role: what a block counts.
#define HPB_NONE 0          // walked for the dynamic table only
#define HPB_RESPONSE 1      // a response's first HEADERS, more to come
#define HPB_RESPONSE_END 2  // a response's only HEADERS (it ends the stream)
#define HPB_TRAILERS 3

#define HP_BYTES 8  // block bytes read per step (one u64: bytes taken by shifts, not indexing)

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

static __always_inline u64 word_at(const u8 *p) {
    u64 w;
    __builtin_memcpy(&w, p, 8);
    return w;
}

static __always_inline u32 word4_at(const u8 *p) {
    u32 w;
    __builtin_memcpy(&w, p, 4);
    return w;
}

// What a new name (cap[], `len` bytes, all kept) is: ":status", "grpc-status",
// "content-type", plain or Huffman-coded (as little-endian words).
static __always_inline u8 name_kind(const u8 *cap, u32 len, u8 huff) {
    if (!huff) {
        if (len == 7 && word4_at(cap) == 0x6174733a && cap[4] == 't' && cap[5] == 'u' &&
            cap[6] == 's')  // ":sta" "tus"
            return KIND_STATUS;
        if (len == 11 && word_at(cap) == 0x6174732d63707267ULL &&  // "grpc-sta"
            cap[8] == 't' && cap[9] == 'u' && cap[10] == 's')
            return KIND_GRPC;
        if (len == 12 && word_at(cap) == 0x2d746e65746e6f63ULL &&  // "content-"
            word4_at(cap + 8) == 0x65707974)                       // "type"
            return KIND_CTYPE;
        return KIND_NONE;
    }
    if (len == 5 && word4_at(cap) == 0x368d84b8 && cap[4] == 0xa3)
        return KIND_STATUS;
    if (len == 8 && word_at(cap) == 0x8fda3412b2c8ca9aULL)
        return KIND_GRPC;
    if (len == 9 && word_at(cap) == 0x59f5c94a6a49ea21ULL && cap[8] == 0x7f)
        return KIND_CTYPE;
    return KIND_NONE;
}

// A field's value as hpack_rec.value (cap[]: its first bytes, `len` in all): :status
// 100-599 (0: unreadable); grpc-status + 1 (0: unreadable); content-type 1 if it
// starts with "application/grpc" (plain, or Huffman: those 16 characters are 88
// bits, 11 whole bytes, whatever follows).
static __always_inline u16 field_value(u8 kind, const u8 *cap, u32 len, u8 huff) {
    u32 v = BAD_DIGITS;
    if (kind == KIND_STATUS) {
        if (!huff && len == 3)
            v = digit(cap[0]) * 100 + digit(cap[1]) * 10 + digit(cap[2]);
        else if (huff && len == 2)
            v = huffman_digits(((u32)cap[0] << 16) | ((u32)cap[1] << 8), 3);
        else if (huff && len == 3)
            v = huffman_digits(((u32)cap[0] << 16) | ((u32)cap[1] << 8) | cap[2], 3);
        return (v >= 100 && v <= 599) ? (u16)v : 0;
    }
    if (kind == KIND_GRPC) {
        if (!huff && len == 1)
            v = digit(cap[0]);
        else if (!huff && len == 2)
            v = digit(cap[0]) * 10 + digit(cap[1]);
        else if (huff && len == 1)
            v = huffman_digits((u32)cap[0] << 16, 1);
        else if (huff && len == 2)
            v = huffman_digits(((u32)cap[0] << 16) | ((u32)cap[1] << 8), 2);
        return v <= 99 ? (u16)(v + 1) : 0;
    }
    if (kind == KIND_CTYPE) {
        if (!huff)
            return len >= 16 && word_at(cap) == 0x746163696c707061ULL &&  // "applicat"
                   word_at(cap + 8) == 0x637072672f6e6f69ULL;             // "ion/grpc"
        return len >= 11 && word_at(cap) == 0x4c3d260d62d0751dULL && cap[8] == 0x4d &&
               cap[9] == 0x65 && cap[10] == 0x64;
    }
    return 0;
}

// Static table entries 8-14: :status 200 204 206 304 400 404 500.
static __always_inline u16 static_status(u32 idx) {
    if (idx == 8)
        return 200;
    if (idx == 9)
        return 204;
    if (idx == 10)
        return 206;
    if (idx == 11)
        return 304;
    if (idx == 12)
        return 400;
    if (idx == 13)
        return 404;
    return 500;
}

// What table entry `idx` (> 0) holds: its kind, and its value in *value.
static __always_inline u8 hp_lookup(struct hpack_state *hp, u32 idx, u16 *value) {
    *value = 0;
    if (idx < 62) {
        if (idx >= 8 && idx <= 14) {
            *value = static_status(idx);
            return KIND_STATUS;
        }
        return idx == 31 ? KIND_CTYPE : KIND_NONE;  // content-type, empty value
    }
    u32 back = idx - 62;
    if (hp->broken || back >= hp->inserted)
        return KIND_LOST;
    u32 seq = hp->inserted - 1 - back;
    for (int i = 0; i < HPACK_RECS; i++) {
        struct hpack_rec *r = &hp->recs[i];
        if (r->seq == seq + 1) {
            *value = r->value;
            return r->kind;
        }
    }
    return seq < hp->forgot ? KIND_LOST : KIND_NONE;
}

// A whole field with what it says, into the block's reading.
static __always_inline void hp_field(struct hpack_state *hp, u8 kind, u16 value) {
    if (kind == KIND_LOST)
        hp->blk_lost = 1;
    else if (kind == KIND_STATUS && value)
        hp->blk_status = value;
    else if (kind == KIND_GRPC && value)
        hp->blk_grpc = (u8)value;
    else if (kind == KIND_CTYPE && value)
        hp->blk_ctype = 1;
}

// A literal field ends: read it, and remember it when the encoder added it.
static __always_inline void hp_literal_end(struct hpack_state *hp) {
    u8 kind = hp->kind;
    u16 value = 0;
    if (kind != KIND_NONE && kind != KIND_LOST)
        value = field_value(kind, hp->cap, hp->str_len, hp->huff);
    hp_field(hp, kind, value);
    hp->state = HP_FIELD;
    if (hp->rep != REP_INCREMENTAL)
        return;
    hp->blk_len = 0;  // the block adds an entry: the same bytes again would not read the same
    u32 seq = hp->inserted;
    hp->inserted = seq + 1;
    if (kind == KIND_NONE)
        return;
    struct hpack_rec *r = &hp->recs[hp->next_rec & (HPACK_RECS - 1)];
    hp->next_rec += 1;
    if (r->seq > hp->forgot)
        hp->forgot = r->seq;  // (its insertion number + 1)
    r->seq = seq + 1;
    r->kind = kind == KIND_LOST ? KIND_NONE : kind;
    r->value = value;
}

static __always_inline void hp_string_end(struct hpack_state *hp) {
    if (hp->in_name) {
        hp->in_name = 0;
        hp->kind = name_kind(hp->cap, hp->str_len, hp->huff);
        hp->state = HP_STRLEN;
        return;
    }
    hp_literal_end(hp);
}

// An integer is complete (hp->ival): what it was for happens. A table index is
// looked up by hp_resolve after it, a string's bytes come next.
static __always_inline void hp_int_done(struct hpack_state *hp) {
    u32 val = hp->ival;
    u8 what = hp->int_for;
    hp->state = HP_FIELD;
    if (what == INT_INDEX) {
        if (val == 0)
            hp->state = HP_LOST;
        hp->pending = val;
        hp->pending_for = INT_INDEX;
    } else if (what == INT_NAME) {
        hp->state = HP_STRLEN;
        hp->in_name = val == 0;
        hp->kind = KIND_NONE;
        hp->pending = val;
        hp->pending_for = INT_NAME;
    } else if (what == INT_STRLEN) {
        // Keep the names that may matter and the values of those that do.
        hp->str_len = val;
        hp->str_left = val;
        hp->cap_len = 0;
        u32 keep = 0;
        if (hp->in_name)
            keep = val == 5 || val == 7 || val == 8 || val == 9 || val == 11 || val == 12;
        else
            keep = hp->kind != KIND_NONE && hp->kind != KIND_LOST;
        hp->capture = keep ? (val < HPACK_CAP ? val : HPACK_CAP) : 0;
        hp->state = HP_STR;
    }
}

#define HP_EV_INT 1
#define HP_EV_STR 2

// Walks the block bytes in w (little-endian: the first is the lowest), n of them, up
// to the first event: an integer or a string complete (the caller acts on it, once
// per step: what the verifier explores per byte stays small). *ev: the event (0:
// none); returns the bytes consumed.
static __always_inline u32 hp_walk(struct hpack_state *hp, u64 w, u32 n, u32 *ev) {
    u32 k = 0;
    for (int i = 0; i < HP_BYTES; i++) {
        if (k >= n)
            break;
        // Fields are re-read from memory every byte: a state machine kept in registers
        // is a known constant to the verifier, which would then walk every path of it.
        asm volatile("" ::: "memory");
        u8 x = (u8)(w >> ((k & (HP_BYTES - 1)) * 8));
        u8 state = hp->state;
        if (state == HP_STR) {
            if (hp->cap_len < hp->capture) {
                hp->cap[hp->cap_len & (HPACK_CAP - 1)] = x;
                hp->cap_len += 1;
                hp->str_left -= 1;
                k += 1;
            } else {
                u32 skip = hp->str_left < n - k ? hp->str_left : n - k;
                hp->str_left -= skip;
                k += skip;
            }
            if (hp->str_left == 0) {
                *ev = HP_EV_STR;
                break;
            }
            continue;
        }
        k += 1;
        if (state == HP_INT) {
            u8 shift = hp->shift;
            if (shift > 21) {
                hp->state = HP_LOST;  // beyond 28 bits: nothing real is that long
                continue;
            }
            hp->ival += (u32)(x & 0x7f) << shift;
            hp->shift = shift + 7;
            if (!(x & 0x80)) {
                *ev = HP_EV_INT;
                break;
            }
            continue;
        }
        if (state == HP_LOST) {
            k = n;  // the rest of the block says nothing any more
            break;
        }
        // A field's first byte, or a string's: an integer with an n-bit prefix.
        u32 max = 0x7f;
        u8 what = INT_STRLEN;
        if (state == HP_STRLEN) {
            hp->huff = x >> 7;
        } else if (x & 0x80) {
            hp->rep = REP_INDEXED;
            what = INT_INDEX;
        } else if ((x & 0xc0) == 0x40) {
            hp->rep = REP_INCREMENTAL;
            what = INT_NAME;
            max = 0x3f;
        } else if ((x & 0xe0) == 0x20) {
            hp->rep = REP_SIZE;
            what = INT_SIZE;
            max = 0x1f;
        } else {
            hp->rep = REP_LITERAL;
            what = INT_NAME;
            max = 0x0f;
        }
        hp->int_for = what;
        u32 prefix = x & max;
        hp->ival = prefix;
        hp->shift = 0;
        if (prefix < max) {
            *ev = HP_EV_INT;
            break;
        }
        hp->state = HP_INT;
    }
    return k;
}

// The table lookup an integer asked for.
static __always_inline void hp_resolve(struct hpack_state *hp) {
    u32 idx = hp->pending;
    hp->pending = 0;
    if (idx == 0)
        return;
    u16 value = 0;
    u8 kind = hp_lookup(hp, idx, &value);
    if (hp->pending_for == INT_INDEX)
        hp_field(hp, kind, value);
    else
        hp->kind = kind;
}

// The block is complete: count its status.
static __always_inline void hp_block_end(struct hpack_state *hp, struct ep_val *v) {
    u8 role = hp->role;
    u16 status = hp->blk_status;
    u8 grpc = hp->blk_grpc;
    u8 ctype = hp->blk_ctype;
    if (hp->state != HP_FIELD)
        hp->broken = 1;  // a field cut short or malformed: insertions are not known
    u8 len = hp->blk_len;
    if (len && hp->state == HP_FIELD && !hp->broken && !hp->blk_lost) {
        struct hpack_memo *m = &hp->memo[role == HPB_TRAILERS];
        m->word = hp->blk_word;
        m->inserted = hp->inserted;
        m->status = status;
        m->grpc = grpc;
        m->ctype = ctype;
        m->len = len;
    }
    hp->blk_len = 0;
    hp->role = HPB_NONE;
    hp->end_headers = 0;
    if (role == HPB_NONE)
        return;
    if (grpc) {
        count_status(v, grpc - 1, 1);
        return;
    }
    if (role != HPB_TRAILERS && status) {
        if (ctype && status == 200) {
            if (role == HPB_RESPONSE)
                return;  // gRPC: its status comes in the trailers
        } else if (status != 200 || !hp->blk_lost) {
            // (A 200 with a field not known may be a gRPC response's: not a status.)
            count_status(v, status, 0);
            return;
        }
    }
    count(CNT_STATUSES_UNREAD);
}

// A frame the server sent with a header block fragment (HEADERS, CONTINUATION,
// PUSH_PROMISE): the walk takes its payload. `role`: what a block this frame starts
// counts (a CONTINUATION keeps its block's). `w`, `n`: a HEADERS frame's whole block
// when it is short (block_word; n = 0: not); the walk remembers it with what it reads
// (struct hpack_memo), and the same bytes again, with nothing added to the table
// since, read the same: such a block is not walked but counted at once (the walk would
// find the same fields and the same table entries). 1 if so (its payload is the
// caller's to skip).
static __always_inline int hpack_frame(struct hpack_state *hp, struct ep_val *v, u32 len,
                                       u8 type, u8 flags, u8 role, u64 w, u32 n) {
    int hit = 0;
    if (type != H2_CONTINUATION) {
        struct hpack_memo *m = &hp->memo[role == HPB_TRAILERS];
        hit = n && !hp->broken && m->len == n && m->word == w && m->inserted == hp->inserted;
        hp->state = HP_FIELD;
        hp->pending = 0;
        hp->blk_status = hit ? m->status : 0;
        hp->blk_grpc = hit ? m->grpc : 0;
        hp->blk_ctype = hit ? m->ctype : 0;
        hp->blk_lost = 0;
        hp->role = role;
    }
    if (hit) {
        len = 0;  // (flags has END_HEADERS: block_word)
        n = 0;    // the memo holds these bytes already
    }
    hp->blk_len = n;
    hp->blk_word = w;
    hp->pre = (type == H2_PUSH_PROMISE ? 4 : 0) +
              (type == H2_HEADERS && (flags & H2_PRIORITY) ? 5 : 0);
    hp->need_pad = type != H2_CONTINUATION && (flags & H2_PADDED) ? 1 : 0;
    hp->pad_len = 0;
    hp->end_headers = (flags & H2_END_HEADERS) ? 1 : 0;
    hp->frame_left = len;
    if (len == 0 && hp->end_headers)
        hp_block_end(hp, v);
    return hit;
}

// One step of the parser in a header-carrying frame's payload (hp->frame_left > 0):
// its pad length, the bytes before the block, up to HP_BYTES of the block, or its
// padding.
static __always_inline void hpack_step(struct h2_cursor *c, struct hpack_state *hp,
                                       struct ep_val *v) {
    u32 avail = c->cur_len - c->pos;
    u32 left = hp->frame_left;
    u32 took = 0;
    if (hp->need_pad) {
        u32 off = win_at(c, 1);
        hp->need_pad = 0;
        hp->pad_len = off < H2_WIN ? (u8)win_word(c, off) : 0;
        took = 1;
    } else if (hp->pre) {
        took = hp->pre;
        if (took > avail)
            took = avail;
        if (took > left)
            took = left;
        hp->pre -= took;
    } else {
        u32 block = left > hp->pad_len ? left - hp->pad_len : 0;
        u32 n = block < avail ? block : avail;
        if (n == 0) {
            took = left < avail ? left : avail;  // padding
        } else if (hp->state == HP_LOST ||
                   (hp->state == HP_STR && hp->cap_len >= hp->capture)) {
            // Bytes that say nothing: skipped without reading them.
            took = n;
            if (hp->state == HP_STR) {
                if (took > hp->str_left)
                    took = hp->str_left;
                hp->str_left -= took;
            }
        } else {
            u64 w = 0;
            if (n > HP_BYTES)
                n = HP_BYTES;
            u32 off = win_at(c, n);
            if (off < H2_WIN)
                w = win_word(c, off);  // bytes past n are not walked
            else
                hp->state = HP_LOST;
            u32 ev = 0;
            took = hp_walk(hp, w, n, &ev);
            if (ev == HP_EV_INT) {
                hp_int_done(hp);
                hp_resolve(hp);
            }
        }
        if (hp->state == HP_STR && hp->str_left == 0)
            hp_string_end(hp);  // the string ended here, or was empty
    }
    if (took > left)
        took = left;
    c->pos += took;
    hp->frame_left = left - took;
    if (hp->frame_left == 0 && hp->end_headers)
        hp_block_end(hp, v);
}

// A HEADERS frame's payload that is a whole header block of at most 8 bytes (no
// padding, no priority, END_HEADERS) in the chunk at the cursor: its bytes, zero past
// `len`, in *w; 0 if it is not such a block.
static __always_inline u32 block_word(struct h2_cursor *c, u32 len, u8 flags, u64 *w) {
    *w = 0;
    if (len == 0 || len > 8 || (flags & (H2_END_HEADERS | H2_PADDED | H2_PRIORITY)) !=
                                   H2_END_HEADERS || c->cur_len - c->pos < len)
        return 0;
    u32 off = win_at(c, len);
    if (off >= H2_WIN)
        return 0;
    u64 mask = len == 8 ? ~0ULL : (1ULL << (BOUNDED(len, 7) * 8)) - 1;
    *w = win_word(c, off) & mask;
    return len;
}

// Whether the `len` (1 to 8) bytes of w are indexed fields only, each one byte
// (index 1-126): such a block adds nothing to the dynamic table. (Branch-free: the
// verifier walks it for every step of a skim run.)
static __always_inline int indexed_only(u64 w, u32 len) {
    u64 mask = len >= 8 ? ~0ULL : (1ULL << (BOUNDED(len, 7) * 8)) - 1;
    u64 high = 0x8080808080808080ULL;
    u64 ones = 0x0101010101010101ULL;
    u64 low = (w & ~high) | (~mask & ones);  // 7-bit indexes; bytes past len: 1
    u64 far = (low ^ (~high & mask));          // 0 where an index is 127 (continued)
    u64 zero = ((low - ones) & ~low) | ((far - ones) & ~far);
    return (w & high & mask) == (high & mask) && !(zero & high);
}

// Skimming (h2.h: the parser's budget ran short) leaves the block being walked, or
// does not walk one: what follows of it is not known. Its insertions are not either
// (hp_block_end marks the table broken), and a :status 200 read before its
// content-type could be a gRPC response's: not a status any more.
static __always_inline void hp_cut(struct hpack_state *hp) {
    hp->state = HP_LOST;
    if (hp->blk_status == 200 && !hp->blk_ctype)
        hp->blk_status = 0;
}

// What a block the skim does not walk (or stops walking) reads, from its bytes when it
// is short (w, n; n = 0: not known): read whole when the bytes are those of the last
// response or trailers block the walk read whole, with nothing added to the table
// since (struct hpack_memo); a block of indexed fields only leaves the table as it
// was, and its :status is read when it is a static entry other than 200 (an HTTP
// status; a 200 may be a gRPC response's). Any other block is cut (hp_cut).
static __always_inline void hp_skimmed(struct hpack_state *hp, u64 w, u32 n) {
    struct hpack_memo *m = &hp->memo[hp->role == HPB_TRAILERS];
    if (n && !hp->broken && m->len == n && m->word == w && m->inserted == hp->inserted) {
        hp->state = HP_FIELD;
        hp->blk_status = m->status;
        hp->blk_grpc = m->grpc;
        hp->blk_ctype = m->ctype;
    } else {
        if (n && indexed_only(w, n)) {
            hp->state = HP_FIELD;
            u8 first = (u8)w;
            if (first >= 0x89 && first <= 0x8e)
                hp->blk_status = static_status(first & 0x7f);
            else if (!hp->blk_ctype)
                hp->blk_status = 0;
        } else {
            hp_cut(hp);
        }
    }
    hp->blk_len = 0;
}

// A skimmed block's frame ends: counted as hp_block_end does, at the block's end. On a
// gRPC connection (`grpc`) a response's first HEADERS whose status was not read counts
// nothing: its status is its trailers', counted there.
static __always_inline void hp_skim_end(struct hpack_state *hp, struct ep_val *v, int grpc) {
    if (grpc && hp->role == HPB_RESPONSE && !hp->blk_status && !hp->blk_grpc)
        hp->role = HPB_NONE;
    if (hp->end_headers)
        hp_block_end(hp, v);
}

// A header-carrying frame the skim does not walk (its payload is skipped): what its
// block reads (hp_skimmed); the caller ends it (hp_skim_end).
static __always_inline void hpack_skim(struct h2_cursor *c, struct hpack_state *hp,
                                       struct ep_val *v, u32 len, u8 type, u8 flags,
                                       u8 role) {
    if (type != H2_CONTINUATION) {
        hp->blk_status = 0;
        hp->blk_grpc = 0;
        hp->blk_ctype = 0;
        hp->blk_lost = 0;
        hp->role = role;
    }
    hp->frame_left = 0;
    hp->end_headers = (flags & H2_END_HEADERS) ? 1 : 0;
    u64 w = 0;
    u32 n = type == H2_HEADERS ? block_word(c, len, flags, &w) : 0;
    hp_skimmed(hp, w, n);
}
