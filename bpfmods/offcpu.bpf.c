/* Off-CPU time: from a task leaving the CPU to it being switched in again, as a log2
 * histogram in microseconds. HS_BLOCKED_ONLY=1 counts only tasks that left because they
 * blocked (sleep, I/O, locks), not preempted ones, whose wait is run-queue latency.
 *
 * Filters apply when the task leaves the CPU, when it is `current` and the helpers can read
 * its tgid and cgroup. The same program will feed the off-CPU flame graph (stacks are taken
 * at the same point, from `current`).
 */
#include "hostscope_bpf.h"

#ifndef HS_BLOCKED_ONLY
#define HS_BLOCKED_ONLY 1
#endif
#ifndef HS_MIN_USEC
#define HS_MIN_USEC 0
#endif
#ifndef HS_FILTER_TGID
#define HS_FILTER_TGID 0
#endif
#ifndef HS_FILTER_CGROUP_ID
#define HS_FILTER_CGROUP_ID 0
#endif

BPF_TABLE("lru_hash", u32, u64, start, HS_MAX_ENTRIES);
BPF_PERCPU_ARRAY(hist, u64, HS_HIST_SLOTS);

static __always_inline void hs_off(u32 pid, int runnable)
{
    if (pid == 0)
        return;
#if HS_BLOCKED_ONLY
    if (runnable)
        return;
#endif
#if HS_FILTER_TGID
    if ((bpf_get_current_pid_tgid() >> 32) != HS_FILTER_TGID)
        return;
#endif
#if HS_FILTER_CGROUP_ID
    if (bpf_get_current_cgroup_id() != HS_FILTER_CGROUP_ID)
        return;
#endif
    u64 ts = bpf_ktime_get_ns();
    start.update(&pid, &ts);
}

static __always_inline void hs_on(u32 pid)
{
    u64 *tsp = start.lookup(&pid);
    if (!tsp)
        return;
    u64 usec = (bpf_ktime_get_ns() - *tsp) / 1000;
    start.delete(&pid);
    if (usec < HS_MIN_USEC)
        return;
    u32 slot = hs_slot(usec);
    u64 *count = hist.lookup(&slot);
    if (count)
        *count += 1;
}

#if HS_USE_RAW_TP
/* args: bool preempt, struct task_struct *prev, *next, unsigned int prev_state (>= 5.18) */
RAW_TRACEPOINT_PROBE(sched_switch)
{
    hs_off(hs_read_u32(ctx->args[1], HS_TASK_PID_OFF),
           ctx->args[0] || (u32)ctx->args[3] == 0);
    hs_on(hs_read_u32(ctx->args[2], HS_TASK_PID_OFF));
    return 0;
}
#else
TRACEPOINT_PROBE(sched, sched_switch)
{
    hs_off(args->prev_pid, (args->prev_state & HS_TASK_REPORT_MASK) == 0);
    hs_on(args->next_pid);
    return 0;
}
#endif
