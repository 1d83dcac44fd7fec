// SPDX-License-Identifier: GPL-2.0
//
// Log-linear latency histogram index, the layout of aviator/latency/histogram.py:
// values are microseconds; v < 16 -> index v; else e = floor(log2 v),
// sub = (v >> (e - 4)) & 15, index = (e - 3) * 16 + sub, clamped to NUM_BUCKETS - 1
// (e > 31 saturates). test/bpf checks the kernel's result against the Python one.

#ifndef AVIATOR_HISTOGRAM_H
#define AVIATOR_HISTOGRAM_H

#define NUM_BUCKETS 464

// floor(log2(v)) for v > 0, loop-free.
static __always_inline u32 log2_u64(u64 v) {
    u32 r = (v > 0xFFFFFFFFULL) << 5;
    v >>= r;
    u32 shift = (v > 0xFFFF) << 4;
    v >>= shift;
    r |= shift;
    shift = (v > 0xFF) << 3;
    v >>= shift;
    r |= shift;
    shift = (v > 0xF) << 2;
    v >>= shift;
    r |= shift;
    shift = (v > 0x3) << 1;
    v >>= shift;
    r |= shift;
    r |= (u32)(v >> 1);
    return r;
}

static __always_inline u32 bucket_index(u64 v) {
    if (v < 16)
        return (u32)v;
    u32 e = log2_u64(v);
    if (e > 31)
        return NUM_BUCKETS - 1;
    u32 sub = (u32)(v >> (e - 4)) & 15;
    u32 idx = (e - 3) * 16 + sub;
    if (idx > NUM_BUCKETS - 1)
        idx = NUM_BUCKETS - 1;
    return idx;
}

#endif
