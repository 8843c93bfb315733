/* Stack counting shared by the CPU profile (profile.bpf.c) and the off-CPU flame graph
 * (offcpu.bpf.c built with HS_STACKS=1): one bounded map of (process, stacks, comm, time
 * slot) -> value, the stack map it refers to, and a count of what did not fit.
 *
 * Bounded maps, nothing dropped silently: a key that finds the counts map full adds its
 * value to `lost`, which user space reports. A stack the stack map cannot take (full,
 * HS_STACK_ENTRIES) leaves a negative id in the key, shown as a "[lost stack]" frame.
 */
#ifndef HOSTSCOPE_STACKS_H
#define HOSTSCOPE_STACKS_H

#include "hostscope_bpf.h"

#ifndef HS_COUNT_ENTRIES
#define HS_COUNT_ENTRIES 65536
#endif
#ifndef HS_STACK_ENTRIES
#define HS_STACK_ENTRIES 16384
#endif

BPF_HASH(counts, struct hs_stack_key, u64, HS_COUNT_ENTRIES);
BPF_STACK_TRACE(stack_traces, HS_STACK_ENTRIES);
BPF_PERCPU_ARRAY(lost, u64, 1);

/* The functions that fill and count keys cannot live here: bcc rewrites map calls
 * (`counts.lookup(...)`) only in the main file, and refuses them inside macros, so each
 * program defines hs_fill_stacks() and hs_count() itself, with the same bodies:
 *
 *   hs_fill_stacks(ctx, key): user and kernel stack ids of `current`, and its comm;
 *   hs_count(key, value): add value to key's count, or to `lost` if the map is full.
 */

#endif /* HOSTSCOPE_STACKS_H */
