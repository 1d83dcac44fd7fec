// SPDX-License-Identifier: GPL-2.0
//
// Reading a response status from the first bytes of an HTTP/2 header block (HPACK,
// RFC 7541) without a decoder: the forms listed in h2.h's opening comment. Included
// by h2.h (uses its struct h2_cursor); no maps, so an ordinary header.
//
// The decoders index their buffer with constants only (the verifier explores them
// cheaply); peek_block puts the block's first bytes at fixed places.

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
