/* Shared by hostscope's BPF programs: histogram slots and the map layouts user space decodes.
 *
 * Settings arrive as -D constants built by bpfmods/settings.py from validated, typed values;
 * nothing from a client is ever pasted into C. Every macro has a default here so each
 * .bpf.c file also compiles on its own (e.g. for inspection with `clang -E`).
 *
 * Histograms are cumulative in the kernel (never read-then-cleared, which loses the events
 * that land between the read and the clear); user space diffs successive reads.
 */
#ifndef HOSTSCOPE_BPF_H
#define HOSTSCOPE_BPF_H

/* log2 slots: slot 0 counts 0-1, slot k (k >= 1) counts [2^k, 2^(k+1) - 1]; the last slot
 * also takes everything larger. 27 slots of microseconds reach 67 s. Keep in sync with
 * histogram.SLOTS. */
#define HS_HIST_SLOTS 27

/* Tasks, requests and sockets tracked at once; maps are bounded and, where an entry can be
 * orphaned (a task that dies while queued), LRU so stale entries age out. */
#ifndef HS_MAX_ENTRIES
#define HS_MAX_ENTRIES 10240
#endif

/* task_struct.__state bits the sched_switch tracepoint reports (TASK_REPORT | REPORT_IDLE);
 * a preempted task is reported as TASK_REPORT_MAX, above these bits, so
 * (prev_state & HS_TASK_REPORT_MASK) == 0 means "still runnable". */
#define HS_TASK_REPORT_MASK 0xff

/* Byte offsets of kernel struct fields, from the running kernel's BTF (bpfmods/btf.py).
 * 0 means unknown: the code that needs them is compiled out. */
#ifndef HS_TASK_PID_OFF
#define HS_TASK_PID_OFF 0
#endif
#ifndef HS_TASK_TGID_OFF
#define HS_TASK_TGID_OFF 0
#endif
#ifndef HS_TASK_REAL_PARENT_OFF
#define HS_TASK_REAL_PARENT_OFF 0
#endif

/* floor(log2(v)) for v >= 1, 0 for v == 0, clamped to the last slot. Branches rather than a
 * loop so the verifier sees straight-line code. */
static __always_inline u32 hs_slot(u64 v)
{
    u32 r = 0;
    if (v >> 32) { v >>= 32; r += 32; }
    if (v >> 16) { v >>= 16; r += 16; }
    if (v >> 8) { v >>= 8; r += 8; }
    if (v >> 4) { v >>= 4; r += 4; }
    if (v >> 2) { v >>= 2; r += 2; }
    if (v >> 1) { r += 1; }
    return r < HS_HIST_SLOTS ? r : HS_HIST_SLOTS - 1;
}

/* Reads a u32 at a BTF-derived offset inside a kernel object (0 if unreadable). */
static __always_inline u32 hs_read_u32(u64 base, u32 off)
{
    u32 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), (void *)(base + off));
    return v;
}

static __always_inline u64 hs_read_u64(u64 base, u32 off)
{
    u64 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), (void *)(base + off));
    return v;
}

/* Key of the per-device histograms: device, operation, slot. */
struct hs_dev_slot {
    u32 dev;   /* dev_t as the block tracepoints report it: major << 20 | minor */
    u32 op;    /* HS_OP_* */
    u32 slot;
    u32 pad;
};

#define HS_OP_READ 0
#define HS_OP_WRITE 1
#define HS_OP_DISCARD 2
#define HS_OP_OTHER 3

/* Key of the stack-counting maps (profile.bpf.c, offcpu.bpf.c with HS_STACKS): a process,
 * its user and kernel stack ids, the thread's comm and a time slot (bpf_ktime_get_ns() /
 * HS_SLOT_NS since boot; user space subtracts the capture's first slot), so one capture
 * gives both a flame graph and a sub-second heat map. Keep in sync with
 * bpfmods/profiler.py StackKey. */
#ifndef HS_SLOT_NS
#define HS_SLOT_NS 20000000ULL
#endif
struct hs_stack_key {
    u32 tgid;
    u32 slot;
    s32 user_stack;
    s32 kernel_stack;
    char comm[16];
};

#endif /* HOSTSCOPE_BPF_H */
