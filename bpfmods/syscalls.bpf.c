/* Syscall latency (raw_syscalls sys_enter -> sys_exit) as one log2 histogram in
 * microseconds, plus per-syscall call counts, total time and error counts for the
 * "top syscalls" table. Everything is cumulative and per-CPU (a getpid storm on every CPU
 * must not bounce one cache line); user space sums CPUs and diffs reads.
 */
#include "hostscope_bpf.h"

#ifndef HS_FILTER_TGID
#define HS_FILTER_TGID 0
#endif
#ifndef HS_FILTER_CGROUP_ID
#define HS_FILTER_CGROUP_ID 0
#endif
/* Syscall numbers at or above this are counted in the last entry (x86_64 has ~460). */
#define HS_MAX_SYSCALLS 1024

struct hs_sys_start {
    u64 ts;
    u32 id;
    u32 pad;
};

struct hs_sys_stats {
    u64 calls;
    u64 nsec;
    u64 errors;
};

BPF_TABLE("lru_hash", u64, struct hs_sys_start, start, HS_MAX_ENTRIES);
BPF_PERCPU_ARRAY(hist, u64, HS_HIST_SLOTS);
BPF_TABLE("percpu_hash", u32, struct hs_sys_stats, per_syscall, HS_MAX_SYSCALLS);

static __always_inline void hs_enter(long id)
{
#if HS_FILTER_TGID
    if ((bpf_get_current_pid_tgid() >> 32) != HS_FILTER_TGID)
        return;
#endif
#if HS_FILTER_CGROUP_ID
    if (bpf_get_current_cgroup_id() != HS_FILTER_CGROUP_ID)
        return;
#endif
    u64 key = bpf_get_current_pid_tgid();
    struct hs_sys_start s = {.ts = bpf_ktime_get_ns(), .id = (u32)id};
    start.update(&key, &s);
}

static __always_inline void hs_exit(long ret)
{
    u64 key = bpf_get_current_pid_tgid();
    struct hs_sys_start *s = start.lookup(&key);
    if (!s)
        return;
    u64 nsec = bpf_ktime_get_ns() - s->ts;
    u32 id = s->id < HS_MAX_SYSCALLS ? s->id : HS_MAX_SYSCALLS - 1;
    start.delete(&key);
    u32 slot = hs_slot(nsec / 1000);
    u64 *count = hist.lookup(&slot);
    if (count)
        *count += 1;
    struct hs_sys_stats zero = {};
    struct hs_sys_stats *st = per_syscall.lookup_or_try_init(&id, &zero);
    if (st) {
        st->calls += 1;
        st->nsec += nsec;
        if (ret < 0)
            st->errors += 1;
    }
}

#if HS_USE_RAW_TP
/* sys_enter args: struct pt_regs *regs, long id; sys_exit: struct pt_regs *regs, long ret */
RAW_TRACEPOINT_PROBE(sys_enter)
{
    hs_enter((long)ctx->args[1]);
    return 0;
}

RAW_TRACEPOINT_PROBE(sys_exit)
{
    hs_exit((long)ctx->args[1]);
    return 0;
}
#else
TRACEPOINT_PROBE(raw_syscalls, sys_enter)
{
    hs_enter(args->id);
    return 0;
}

TRACEPOINT_PROBE(raw_syscalls, sys_exit)
{
    hs_exit(args->ret);
    return 0;
}
#endif
