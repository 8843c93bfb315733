/* Off-CPU time: from a task leaving the CPU to it being switched in again, as a log2
 * histogram in microseconds. HS_BLOCKED_ONLY=1 counts only tasks that left because they
 * blocked (sleep, I/O, locks), not preempted ones, whose wait is run-queue latency.
 *
 * Filters apply when the task leaves the CPU, when it is `current` and the helpers can read
 * its tgid and cgroup.
 *
 * HS_STACKS=1 turns the same program into the off-CPU flame graph (bpfmods/profiler.py):
 * the stacks and comm of `current` are taken when it leaves the CPU, kept with the start
 * time, and its blocked microseconds are added to that stack's key (time slot: when it is
 * switched back in) instead of to the histogram.
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
#ifndef HS_STACKS
#define HS_STACKS 0
#endif

#if HS_STACKS
#include "hostscope_stacks.h"
struct hs_off_start {
    u64 ts;
    struct hs_stack_key key;
};
BPF_TABLE("lru_hash", u32, struct hs_off_start, start, HS_MAX_ENTRIES);
/* See hostscope_stacks.h for why these two are defined in each program. */
static __always_inline void hs_fill_stacks(void *ctx, struct hs_stack_key *key)
{
    key->user_stack = stack_traces.get_stackid(ctx, BPF_F_USER_STACK);
    key->kernel_stack = stack_traces.get_stackid(ctx, 0);
    bpf_get_current_comm(&key->comm, sizeof(key->comm));
}

static __always_inline void hs_count(struct hs_stack_key *key, u64 value)
{
    u64 zero = 0;
    u64 *v = counts.lookup(key);
    if (!v) {
        /* NOEXIST: a racing CPU that inserted the same key first keeps its count */
        counts.insert(key, &zero);
        v = counts.lookup(key);
    }
    if (v) {
        __sync_fetch_and_add(v, value);
        return;
    }
    u32 first = 0;
    u64 *l = lost.lookup(&first);
    if (l)
        *l += value;
}
#else
BPF_TABLE("lru_hash", u32, u64, start, HS_MAX_ENTRIES);
BPF_PERCPU_ARRAY(hist, u64, HS_HIST_SLOTS);
#endif

static __always_inline void hs_off(void *ctx, u32 pid, int runnable)
{
    if (pid == 0)
        return;
#if HS_BLOCKED_ONLY
    if (runnable)
        return;
#endif
    u64 id = bpf_get_current_pid_tgid();
#if HS_FILTER_TGID
    if ((id >> 32) != HS_FILTER_TGID)
        return;
#endif
#if HS_FILTER_CGROUP_ID && defined(HS_FILTER_CGROUP_LEVEL)
    /* profiles: the cgroup or any below it (HS_FILTER_CGROUP_LEVEL is its depth) */
    if (bpf_get_current_ancestor_cgroup_id(HS_FILTER_CGROUP_LEVEL) != HS_FILTER_CGROUP_ID)
        return;
#elif HS_FILTER_CGROUP_ID
    if (bpf_get_current_cgroup_id() != HS_FILTER_CGROUP_ID)
        return;
#endif
#if HS_STACKS
    struct hs_off_start s = {};
    s.ts = bpf_ktime_get_ns();
    s.key.tgid = id >> 32;
    hs_fill_stacks(ctx, &s.key);
    start.update(&pid, &s);
#else
    u64 ts = bpf_ktime_get_ns();
    start.update(&pid, &ts);
#endif
}

static __always_inline void hs_on(u32 pid)
{
#if HS_STACKS
    struct hs_off_start *s = start.lookup(&pid);
    if (!s)
        return;
    u64 now = bpf_ktime_get_ns();
    u64 usec = (now - s->ts) / 1000;
    struct hs_stack_key key = s->key;
    start.delete(&pid);
    if (usec < HS_MIN_USEC || usec == 0)
        return;
    key.slot = now / HS_SLOT_NS;
    hs_count(&key, usec);
#else
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
#endif
}

#if HS_USE_RAW_TP
/* args: bool preempt, struct task_struct *prev, *next, unsigned int prev_state (>= 5.18) */
RAW_TRACEPOINT_PROBE(sched_switch)
{
    hs_off(ctx, hs_read_u32(ctx->args[1], HS_TASK_PID_OFF),
           ctx->args[0] || (u32)ctx->args[3] == 0);
    hs_on(hs_read_u32(ctx->args[2], HS_TASK_PID_OFF));
    return 0;
}
#else
TRACEPOINT_PROBE(sched, sched_switch)
{
    hs_off(args, args->prev_pid, (args->prev_state & HS_TASK_REPORT_MASK) == 0);
    hs_on(args->next_pid);
    return 0;
}
#endif
