/* Run-queue latency: from a task becoming runnable (woken, newly forked, or preempted while
 * still runnable) to the moment it is switched in, as a log2 histogram in microseconds.
 *
 * Attach: raw tracepoints (HS_USE_RAW_TP=1: no argument copying, the cheapest hook; task
 * pids read at BTF offsets) or classic tracepoints (arguments from tracefs formats).
 * Filters (HS_FILTER_CGROUP_ID, HS_FILTER_TGID): when a task is switched in, `current` is
 * still the previous task, so the task's own cgroup and tgid are not available to helpers
 * then. With a filter the measured latency is parked and accounted when the task next
 * leaves the CPU, when it *is* `current`.
 */
#include "hostscope_bpf.h"

#ifndef HS_FILTER_CGROUP_ID
#define HS_FILTER_CGROUP_ID 0
#endif
#ifndef HS_FILTER_TGID
#define HS_FILTER_TGID 0
#endif
#define HS_DEFERRED (HS_FILTER_CGROUP_ID || HS_FILTER_TGID)

BPF_TABLE("lru_hash", u32, u64, start, HS_MAX_ENTRIES);
BPF_PERCPU_ARRAY(hist, u64, HS_HIST_SLOTS);
#if HS_DEFERRED
BPF_TABLE("lru_hash", u32, u64, pending, HS_MAX_ENTRIES);
#endif

static __always_inline void hs_enqueue(u32 pid)
{
    if (pid == 0)  /* the per-CPU idle tasks never wait in a run queue */
        return;
    u64 ts = bpf_ktime_get_ns();
    start.update(&pid, &ts);
}

static __always_inline void hs_record(u64 usec)
{
    u32 slot = hs_slot(usec);
    u64 *count = hist.lookup(&slot);
    if (count)
        *count += 1;  /* per-CPU slot: no other CPU writes it */
}

static __always_inline void hs_switch_in(u32 pid)
{
    u64 *tsp = start.lookup(&pid);
    if (!tsp)
        return;
    u64 usec = (bpf_ktime_get_ns() - *tsp) / 1000;
    start.delete(&pid);
#if HS_DEFERRED
    pending.update(&pid, &usec);
#else
    hs_record(usec);
#endif
}

static __always_inline void hs_switch_out(u32 pid)
{
#if HS_DEFERRED
    u64 *parked = pending.lookup(&pid);
    if (!parked)
        return;
    u64 usec = *parked;
    pending.delete(&pid);
#if HS_FILTER_CGROUP_ID
    if (bpf_get_current_cgroup_id() != HS_FILTER_CGROUP_ID)
        return;
#endif
#if HS_FILTER_TGID
    if ((bpf_get_current_pid_tgid() >> 32) != HS_FILTER_TGID)
        return;
#endif
    hs_record(usec);
#endif
}

#if HS_USE_RAW_TP
RAW_TRACEPOINT_PROBE(sched_wakeup)
{
    hs_enqueue(hs_read_u32(ctx->args[0], HS_TASK_PID_OFF));
    return 0;
}

RAW_TRACEPOINT_PROBE(sched_wakeup_new)
{
    hs_enqueue(hs_read_u32(ctx->args[0], HS_TASK_PID_OFF));
    return 0;
}

/* args: bool preempt, struct task_struct *prev, *next, unsigned int prev_state (>= 5.18) */
RAW_TRACEPOINT_PROBE(sched_switch)
{
    u32 prev = hs_read_u32(ctx->args[1], HS_TASK_PID_OFF);
    hs_switch_out(prev);
    if (ctx->args[0] || (u32)ctx->args[3] == 0)
        hs_enqueue(prev);
    hs_switch_in(hs_read_u32(ctx->args[2], HS_TASK_PID_OFF));
    return 0;
}
#else
TRACEPOINT_PROBE(sched, sched_wakeup)
{
    hs_enqueue(args->pid);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_wakeup_new)
{
    hs_enqueue(args->pid);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_switch)
{
    u32 prev = args->prev_pid;
    hs_switch_out(prev);
    if ((args->prev_state & HS_TASK_REPORT_MASK) == 0)
        hs_enqueue(prev);
    hs_switch_in(args->next_pid);
    return 0;
}
#endif
