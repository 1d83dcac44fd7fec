// SPDX-License-Identifier: GPL-2.0
//
// The log-linear histogram's bucket index of a value in microseconds. The layout and
// its constants (HIST_*, NUM_BUCKETS) are in latency.h; it is that of
// aviator/latency/histogram.py, and test/bpf checks the kernel's result against the
// Python one bit for bit.

#ifndef AVIATOR_HISTOGRAM_H
#define AVIATOR_HISTOGRAM_H

#include "latency.h"

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
    if (v < HIST_SUB_BUCKETS)
        return (u32)v;
    u32 e = log2_u64(v);
    if (e > HIST_MAX_EXP)
        return NUM_BUCKETS - 1;
    u32 sub = (u32)(v >> (e - HIST_SUB_BITS)) & (HIST_SUB_BUCKETS - 1);
    u32 idx = (e - HIST_SUB_BITS + 1) * HIST_SUB_BUCKETS + sub;
    if (idx > NUM_BUCKETS - 1)
        idx = NUM_BUCKETS - 1;
    return idx;
}

#endif
