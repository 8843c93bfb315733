/* TCP retransmits (tcp:tcp_retransmit_skb), counted in the kernel per flow and state: a
 * bounded LRU table of {addresses, ports, state} -> {count, last time}, plus a total.
 * Aggregating in the kernel keeps a retransmit storm from flooding user space.
 */
#include "hostscope_bpf.h"

struct hs_flow {
    u8 saddr[16];
    u8 daddr[16];
    u16 family;
    u16 sport;
    u16 dport;
    u16 state;
};

struct hs_flow_stats {
    u64 count;
    u64 last_ns;
};

BPF_TABLE("lru_hash", struct hs_flow, struct hs_flow_stats, flows, 4096);
BPF_ARRAY(total, u64, 1);

TRACEPOINT_PROBE(tcp, tcp_retransmit_skb)
{
    struct hs_flow key = {};
    key.family = args->family;
    key.sport = args->sport;
    key.dport = args->dport;
    key.state = args->state;
    if (args->family == 2) {
        bpf_probe_read_kernel(key.saddr, 4, args->saddr);
        bpf_probe_read_kernel(key.daddr, 4, args->daddr);
    } else {
        bpf_probe_read_kernel(key.saddr, 16, args->saddr_v6);
        bpf_probe_read_kernel(key.daddr, 16, args->daddr_v6);
    }
    struct hs_flow_stats zero = {};
    struct hs_flow_stats *st = flows.lookup_or_try_init(&key, &zero);
    if (st) {
        __sync_fetch_and_add(&st->count, 1);
        st->last_ns = bpf_ktime_get_ns();
    }
    u32 idx = 0;
    u64 *t = total.lookup(&idx);
    if (t)
        __sync_fetch_and_add(t, 1);
    return 0;
}
