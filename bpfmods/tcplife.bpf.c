/* TCP session lifetimes (tcplife-style): one event per TCP socket that reaches CLOSE after
 * having been seen opening, with addresses, ports, duration, process and bytes.
 *
 * sock:inet_sock_set_state gives addresses and states. Bytes come from struct tcp_sock at
 * offsets read from the running kernel's BTF (HS_TCP_BYTES_ACKED_OFF,
 * HS_TCP_BYTES_RECEIVED_OFF; 0 = unknown, bytes reported as 0 and flagged). The process is
 * the one that opened the socket (SYN_SENT) or, better, the one that closed it
 * (ESTABLISHED -> FIN_WAIT1, CLOSE_WAIT -> LAST_ACK run in the closing process's context);
 * passive opens happen in softirq context, so a listener's socket only gets a process
 * when it is closed.
 */
#include "hostscope_bpf.h"

#ifndef HS_FILTER_PORT
#define HS_FILTER_PORT 0
#endif
#ifndef HS_TCP_BYTES_ACKED_OFF
#define HS_TCP_BYTES_ACKED_OFF 0
#endif
#ifndef HS_TCP_BYTES_RECEIVED_OFF
#define HS_TCP_BYTES_RECEIVED_OFF 0
#endif

#define HS_IPPROTO_TCP 6
#define HS_TCP_ESTABLISHED 1
#define HS_TCP_SYN_SENT 2
#define HS_TCP_FIN_WAIT1 4
#define HS_TCP_CLOSE 7
#define HS_TCP_LAST_ACK 9

struct hs_birth {
    u64 ts;
    u32 pid;
    u32 pad;
    char comm[16];
};

struct hs_tcplife_event {
    u64 start_ns;
    u64 end_ns;
    u64 tx_bytes;
    u64 rx_bytes;
    u32 pid;
    u16 family;
    u16 sport;
    u16 dport;
    u16 have_bytes;
    u8 saddr[16];
    u8 daddr[16];
    char comm[16];
};

BPF_TABLE("lru_hash", u64, struct hs_birth, birth, HS_MAX_ENTRIES);
BPF_RINGBUF_OUTPUT(events, 64);  /* pages: 256 KiB, ~2,500 sessions between polls */
/* [0] sessions closed, [1] events lost because the ring was full */
BPF_ARRAY(stats, u64, 2);

static __always_inline void hs_count(u32 idx)
{
    u64 *v = stats.lookup(&idx);
    if (v)
        __sync_fetch_and_add(v, 1);
}

TRACEPOINT_PROBE(sock, inet_sock_set_state)
{
    if (args->protocol != HS_IPPROTO_TCP)
        return 0;
#if HS_FILTER_PORT
    if (args->sport != HS_FILTER_PORT && args->dport != HS_FILTER_PORT)
        return 0;
#endif
    u64 sk = (u64)args->skaddr;
    int newstate = args->newstate;
    int oldstate = args->oldstate;

    if (newstate != HS_TCP_CLOSE) {
        struct hs_birth *b = birth.lookup(&sk);
        if (!b) {
            struct hs_birth fresh = {.ts = bpf_ktime_get_ns()};
            if (newstate == HS_TCP_SYN_SENT) {
                fresh.pid = bpf_get_current_pid_tgid() >> 32;
                bpf_get_current_comm(&fresh.comm, sizeof(fresh.comm));
            }
            birth.update(&sk, &fresh);
        } else if ((oldstate == HS_TCP_ESTABLISHED && newstate == HS_TCP_FIN_WAIT1) ||
                   newstate == HS_TCP_LAST_ACK) {
            b->pid = bpf_get_current_pid_tgid() >> 32;
            bpf_get_current_comm(&b->comm, sizeof(b->comm));
        }
        return 0;
    }

    struct hs_birth *b = birth.lookup(&sk);
    if (!b)
        return 0;  /* opened before we attached: its lifetime is unknown */
    hs_count(0);
    struct hs_tcplife_event *ev = events.ringbuf_reserve(sizeof(struct hs_tcplife_event));
    if (!ev) {
        hs_count(1);
        birth.delete(&sk);
        return 0;
    }
    ev->start_ns = b->ts;
    ev->end_ns = bpf_ktime_get_ns();
    ev->pid = b->pid;
    __builtin_memcpy(ev->comm, b->comm, sizeof(ev->comm));
    ev->family = args->family;
    ev->sport = args->sport;
    ev->dport = args->dport;
    bpf_probe_read_kernel(ev->saddr, sizeof(ev->saddr), args->saddr_v6);
    bpf_probe_read_kernel(ev->daddr, sizeof(ev->daddr), args->daddr_v6);
    if (args->family == 2) {  /* AF_INET: the v4 fields are authoritative */
        __builtin_memset(ev->saddr, 0, sizeof(ev->saddr));
        __builtin_memset(ev->daddr, 0, sizeof(ev->daddr));
        bpf_probe_read_kernel(ev->saddr, 4, args->saddr);
        bpf_probe_read_kernel(ev->daddr, 4, args->daddr);
    }
#if HS_TCP_BYTES_ACKED_OFF && HS_TCP_BYTES_RECEIVED_OFF
    ev->tx_bytes = hs_read_u64(sk, HS_TCP_BYTES_ACKED_OFF);
    ev->rx_bytes = hs_read_u64(sk, HS_TCP_BYTES_RECEIVED_OFF);
    ev->have_bytes = 1;
#else
    ev->tx_bytes = 0;
    ev->rx_bytes = 0;
    ev->have_bytes = 0;
#endif
    events.ringbuf_submit(ev, 0);
    birth.delete(&sk);
    return 0;
}
