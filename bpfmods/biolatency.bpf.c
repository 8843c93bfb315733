/* Block I/O latency: request issue to the driver (block_rq_issue) to completion
 * (block_rq_complete), per device and operation, as log2 histograms in microseconds.
 *
 * Only tracepoints: their arguments (dev, sector, rwbs) say everything needed, whereas a raw
 * tracepoint hands over a struct request whose layout changes between kernels. Requests are
 * matched on (dev, sector) as the tracepoints carry no request pointer.
 */
#include "hostscope_bpf.h"

#ifndef HS_PER_DISK
#define HS_PER_DISK 1
#endif
#ifndef HS_PER_OP
#define HS_PER_OP 1
#endif
#ifndef HS_FILTER_DEV
#define HS_FILTER_DEV 0
#endif

struct hs_rq_key {
    u64 sector;
    u32 dev;
    u32 pad;
};

struct hs_rq_start {
    u64 ts;
    u32 op;
    u32 pad;
};

BPF_TABLE("lru_hash", struct hs_rq_key, struct hs_rq_start, start, HS_MAX_ENTRIES);
/* devices x 4 ops x 27 slots; a host with more disks than fit loses new keys, counted. */
BPF_HASH(hist, struct hs_dev_slot, u64, 8192);
BPF_ARRAY(overflow, u64, 1);

/* rwbs: an optional leading 'F' (pre-flush), then the operation letter. */
static __always_inline u32 hs_op(char c0, char c1)
{
    char c = c0 == 'F' ? c1 : c0;
    if (c == 'R')
        return HS_OP_READ;
    if (c == 'W')
        return HS_OP_WRITE;
    if (c == 'D')
        return HS_OP_DISCARD;
    return HS_OP_OTHER;
}

TRACEPOINT_PROBE(block, block_rq_issue)
{
#if HS_FILTER_DEV
    if (args->dev != HS_FILTER_DEV)
        return 0;
#endif
    struct hs_rq_key key = {.sector = args->sector, .dev = args->dev};
    struct hs_rq_start val = {.ts = bpf_ktime_get_ns(), .op = hs_op(args->rwbs[0], args->rwbs[1])};
    start.update(&key, &val);
    return 0;
}

TRACEPOINT_PROBE(block, block_rq_complete)
{
    struct hs_rq_key key = {.sector = args->sector, .dev = args->dev};
    struct hs_rq_start *s = start.lookup(&key);
    if (!s)
        return 0;
    u64 usec = (bpf_ktime_get_ns() - s->ts) / 1000;
    struct hs_dev_slot hk = {.slot = hs_slot(usec)};
#if HS_PER_DISK
    hk.dev = args->dev;
#endif
#if HS_PER_OP
    hk.op = s->op;
#endif
    start.delete(&key);
    u64 zero = 0;
    u64 *count = hist.lookup_or_try_init(&hk, &zero);
    if (count) {
        __sync_fetch_and_add(count, 1);
    } else {
        u32 idx = 0;
        u64 *lost = overflow.lookup(&idx);
        if (lost)
            __sync_fetch_and_add(lost, 1);
    }
    return 0;
}
