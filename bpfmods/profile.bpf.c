/* CPU profile: a perf event (cpu-clock at HS frequency, one per CPU, attached by user space)
 * samples whatever runs; each sample adds 1 to its (process, user stack, kernel stack,
 * comm, 20 ms slot) key. Stacks are counted in the kernel: user space reads a few thousand
 * keys after the capture instead of every sample.
 *
 * The idle task (pid 0) is not counted: a flame graph of CPU use, not of CPU time.
 * Filters (process, cgroup v2 id) are compiled in as constants from validated integers.
 */
#include <uapi/linux/bpf_perf_event.h>
#include "hostscope_stacks.h"

#ifndef HS_FILTER_TGID
#define HS_FILTER_TGID 0
#endif
#ifndef HS_FILTER_CGROUP_ID
#define HS_FILTER_CGROUP_ID 0
#endif
#ifndef HS_FILTER_CGROUP_LEVEL
#define HS_FILTER_CGROUP_LEVEL 0
#endif

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

int hs_perf_sample(struct bpf_perf_event_data *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
    if ((u32)id == 0)
        return 0;
#if HS_FILTER_TGID
    if (tgid != HS_FILTER_TGID)
        return 0;
#endif
#if HS_FILTER_CGROUP_ID
    /* the cgroup or any cgroup below it (a container's processes may sit in sub-cgroups) */
    if (bpf_get_current_ancestor_cgroup_id(HS_FILTER_CGROUP_LEVEL) != HS_FILTER_CGROUP_ID)
        return 0;
#endif
    struct hs_stack_key key = {};
    key.tgid = tgid;
    key.slot = bpf_ktime_get_ns() / HS_SLOT_NS;
    hs_fill_stacks(ctx, &key);
    hs_count(&key, 1);
    return 0;
}
