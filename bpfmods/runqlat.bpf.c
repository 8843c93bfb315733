/* Run-queue latency: from a task becoming runnable (woken, newly forked, or preempted while
 * still runnable) to the moment it is switched in, as a log2 histogram in microseconds.
 *
 * Attach, cheapest first:
 * - HS_USE_TP_BTF=1: one BTF-enabled tracepoint (tp_btf) on sched_switch, reading the
 *   scheduler's own accounting instead of timing wakeups: task_struct.sched_info keeps
 *   run_delay (total ns spent waiting on a run queue) and pcount (times switched in after
 *   waiting), the figures of /proc/PID/schedstat. When a task leaves the CPU, the growth
 *   of run_delay since it last left is the wait that preceded the run now ending. No
 *   wakeup hooks (half the events of a context-switch storm), no clock reads; the task's
 *   previous figures live in task-local storage (freed with the task); the task is
 *   `current`, so filters are exact and immediate. Latencies are accounted when the run
 *   ends rather than when it starts. Needs CONFIG_SCHED_INFO (schedstats or delay
 *   accounting; the BTF offsets of sched_info are the check). bcc cannot load tp_btf
 *   programs itself: bpfmods/runtime.py loads hs_tp_btf__<event> functions.
 * - HS_USE_RAW_TP=1: raw tracepoints (no argument copying); task pids read at BTF offsets.
 * - otherwise classic tracepoints (arguments from tracefs formats).
 * With these two, filters (HS_FILTER_CGROUP_ID, HS_FILTER_TGID) are applied late: when a
 * task is switched in, `current` is still the previous task, so the task's own cgroup and
 * tgid are not available to helpers then; the measured latency is parked and accounted
 * when the task next leaves the CPU, when it *is* `current`.
 */
#include "hostscope_bpf.h"

#ifndef HS_FILTER_CGROUP_ID
#define HS_FILTER_CGROUP_ID 0
#endif
#ifndef HS_FILTER_TGID
#define HS_FILTER_TGID 0
#endif
#ifndef HS_USE_TP_BTF
#define HS_USE_TP_BTF 0
#endif
#define HS_DEFERRED (HS_FILTER_CGROUP_ID || HS_FILTER_TGID)

#if HS_USE_TP_BTF
#ifndef HS_TASK_SCHED_INFO_OFF
#define HS_TASK_SCHED_INFO_OFF 0
#endif
#ifndef HS_SCHED_INFO_RUN_DELAY_OFF
#define HS_SCHED_INFO_RUN_DELAY_OFF 0
#endif
#ifndef HS_SCHED_INFO_PCOUNT_OFF
#define HS_SCHED_INFO_PCOUNT_OFF 0
#endif

/* A task's sched_info figures when it last left a CPU (pcount 0: not seen yet). */
struct hs_task {
    u64 run_delay;
    u64 pcount;
};

BPF_TASK_STORAGE(tasks, struct hs_task);
BPF_PERCPU_ARRAY(hist, u64, HS_HIST_SLOTS);

/* Plain loads from a trusted task pointer: the verifier checks each offset against the
 * kernel's BTF, and no helper is called. */
static __always_inline u32 hs_task_u32(u64 task, u32 off)
{
    return *(u32 *)(task + off);
}

static __always_inline u64 hs_task_u64(u64 task, u32 off)
{
    return *(u64 *)(task + off);
}

/* args: bool preempt, struct task_struct *prev, *next, unsigned int prev_state (>= 5.18) */
int hs_tp_btf__sched_switch(struct bpf_raw_tracepoint_args *ctx)
{
    u64 prev = ctx->args[1];
    if (hs_task_u32(prev, HS_TASK_PID_OFF) == 0)
        return 0;  /* the idle task never waits */
#if HS_FILTER_TGID
    if (hs_task_u32(prev, HS_TASK_TGID_OFF) != HS_FILTER_TGID)
        return 0;
#endif
#if HS_FILTER_CGROUP_ID
    if (bpf_get_current_cgroup_id() != HS_FILTER_CGROUP_ID)  /* prev is current */
        return 0;
#endif
    u64 delay = hs_task_u64(prev, HS_TASK_SCHED_INFO_OFF + HS_SCHED_INFO_RUN_DELAY_OFF);
    u64 runs = hs_task_u64(prev, HS_TASK_SCHED_INFO_OFF + HS_SCHED_INFO_PCOUNT_OFF);
    struct hs_task *t = tasks.task_storage_get((struct task_struct *)prev, 0,
                                               BPF_LOCAL_STORAGE_GET_F_CREATE);
    if (!t)
        return 0;
    u64 seen = t->pcount, before = t->run_delay;
    t->pcount = runs;
    t->run_delay = delay;
    if (runs <= seen)
        return 0;  /* no wait ended since it last left (it ran without queueing) */
    if (seen == 0) {
        if (runs != 1)
            return 0;  /* first sight: its earlier waits are not ours to count */
        before = 0;    /* a new task: its one wait is all of run_delay */
    }
    /* Normally one run per switch-out; more only after filtered-out runs: their mean. */
    u64 n = runs - seen;
    u64 usec = (delay - before) / 1000;
    if (n > 1)
        usec /= n;
    u32 slot = hs_slot(usec);
    u64 *count = hist.lookup(&slot);
    if (count)
        *count += n;  /* per-CPU slot: no other CPU writes it */
    return 0;
}

#else /* raw tracepoints and tracepoints: a hash keyed by task */

/* Keyed by task: the task_struct pointer with raw tracepoints (no read needed to get it),
 * the pid with tracepoints. Entries are reused in place (timestamp 0 = not queued) rather
 * than deleted and re-inserted, and the map is a plain preallocated hash, not LRU: on a
 * context-switch storm (bench_bpf.py) inserts, deletes and LRU bookkeeping were most of the
 * cost. Exiting tasks are removed at sched_process_exit, so the map holds live tasks only;
 * should a host have more than HS_RUNQ_ENTRIES of them, the excess go unmeasured. */
#define HS_RUNQ_ENTRIES 65536
BPF_HASH(start, u64, u64, HS_RUNQ_ENTRIES);
BPF_PERCPU_ARRAY(hist, u64, HS_HIST_SLOTS);
#if HS_DEFERRED
BPF_HASH(pending, u64, u64, HS_RUNQ_ENTRIES);
#endif

static __always_inline void hs_exit(u64 task)
{
    start.delete(&task);
#if HS_DEFERRED
    pending.delete(&task);
#endif
}

static __always_inline void hs_enqueue(u64 task)
{
    u64 now = bpf_ktime_get_ns();
    u64 *tsp = start.lookup(&task);
    if (tsp) {
        *tsp = now;
        return;
    }
    start.update(&task, &now);
}

static __always_inline void hs_record(u64 usec)
{
    u32 slot = hs_slot(usec);
    u64 *count = hist.lookup(&slot);
    if (count)
        *count += 1;  /* per-CPU slot: no other CPU writes it */
}

static __always_inline void hs_switch_in(u64 task)
{
    u64 *tsp = start.lookup(&task);
    if (!tsp || !*tsp)
        return;
    u64 usec = (bpf_ktime_get_ns() - *tsp) / 1000;
    *tsp = 0;
#if HS_DEFERRED
    u64 *parked = pending.lookup(&task);
    if (parked)
        *parked = usec + 1;  /* +1: 0 means nothing parked */
    else {
        u64 v = usec + 1;
        pending.update(&task, &v);
    }
#else
    hs_record(usec);
#endif
}

static __always_inline void hs_switch_out(u64 task)
{
#if HS_DEFERRED
    u64 *parked = pending.lookup(&task);
    if (!parked || !*parked)
        return;
    u64 usec = *parked - 1;
    *parked = 0;
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
    hs_enqueue(ctx->args[0]);
    return 0;
}

RAW_TRACEPOINT_PROBE(sched_wakeup_new)
{
    hs_enqueue(ctx->args[0]);
    return 0;
}

RAW_TRACEPOINT_PROBE(sched_process_exit)
{
    hs_exit(ctx->args[0]);
    return 0;
}

/* args: bool preempt, struct task_struct *prev, *next, unsigned int prev_state (>= 5.18) */
RAW_TRACEPOINT_PROBE(sched_switch)
{
    u64 prev = ctx->args[1];
    hs_switch_out(prev);
    /* Still runnable: preempted, or the idle task (pid 0), which never queues. The pid is
     * read only on this path; a task that blocked needs no read at all. */
    if ((ctx->args[0] || (u32)ctx->args[3] == 0) && hs_read_u32(prev, HS_TASK_PID_OFF) != 0)
        hs_enqueue(prev);
    hs_switch_in(ctx->args[2]);
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

TRACEPOINT_PROBE(sched, sched_process_exit)
{
    hs_exit(args->pid);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_switch)
{
    u64 prev = args->prev_pid;
    hs_switch_out(prev);
    if ((args->prev_state & HS_TASK_REPORT_MASK) == 0 && prev != 0)
        hs_enqueue(prev);
    hs_switch_in(args->next_pid);
    return 0;
}
#endif
#endif /* HS_USE_TP_BTF */
