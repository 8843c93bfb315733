/* New processes (execsnoop-style): one event per successful exec from
 * sched:sched_process_exec (filename, pid, comm after exec), with the argument vector
 * captured at syscalls:sys_enter_execve/execveat when those tracepoints exist
 * (HS_WITH_ARGV=1; kernels without CONFIG_FTRACE_SYSCALLS lack them). Arguments are read
 * from user memory before the exec replaces it and parked per thread until the exec
 * completes; failed execs leave a parked entry that the LRU map ages out.
 *
 * Every string is bounded: HS_ARGS x HS_ARG_LEN bytes of arguments, 256 of filename.
 */
#include "hostscope_bpf.h"

#ifndef HS_WITH_ARGV
#define HS_WITH_ARGV 1
#endif
#ifndef HS_ARGS
#define HS_ARGS 16
#endif
#define HS_ARG_LEN 64
#define HS_FILENAME_LEN 256

struct hs_argv {
    u32 argc;         /* arguments read (at most HS_ARGS) */
    u32 truncated;    /* 1 if there were more */
    char args[HS_ARGS][HS_ARG_LEN];
};

struct hs_exec_event {
    u64 ts;
    u32 pid;
    u32 ppid;
    u32 uid;
    u32 argc;
    u32 truncated;
    u32 have_argv;
    char comm[16];
    char filename[HS_FILENAME_LEN];
    char args[HS_ARGS][HS_ARG_LEN];
};

BPF_RINGBUF_OUTPUT(events, 128);  /* pages: 512 KiB, ~300 execs between polls */
/* [0] execs seen, [1] events lost because the ring was full */
BPF_ARRAY(stats, u64, 2);

static __always_inline void hs_count(u32 idx)
{
    u64 *v = stats.lookup(&idx);
    if (v)
        __sync_fetch_and_add(v, 1);
}

#if HS_WITH_ARGV
BPF_TABLE("lru_hash", u32, struct hs_argv, parked, 1024);
BPF_PERCPU_ARRAY(scratch, struct hs_argv, 1);

static __always_inline void hs_park_argv(const char *const *argv)
{
    u32 zero = 0;
    struct hs_argv *a = scratch.lookup(&zero);
    if (!a)
        return;
    a->argc = 0;
    a->truncated = 0;
#pragma unroll
    for (int i = 0; i < HS_ARGS; i++) {
        const char *p = NULL;
        a->args[i][0] = 0;
        if (bpf_probe_read_user(&p, sizeof(p), &argv[i]) || !p)
            break;
        bpf_probe_read_user_str(a->args[i], HS_ARG_LEN, p);
        a->argc = i + 1;
    }
    if (a->argc == HS_ARGS) {
        const char *p = NULL;
        bpf_probe_read_user(&p, sizeof(p), &argv[HS_ARGS]);
        a->truncated = p != NULL;
    }
    u32 tid = (u32)bpf_get_current_pid_tgid();
    parked.update(&tid, a);
}

TRACEPOINT_PROBE(syscalls, sys_enter_execve)
{
    hs_park_argv(args->argv);
    return 0;
}

#if HS_WITH_EXECVEAT
TRACEPOINT_PROBE(syscalls, sys_enter_execveat)
{
    hs_park_argv(args->argv);
    return 0;
}
#endif
#endif

TRACEPOINT_PROBE(sched, sched_process_exec)
{
    hs_count(0);
    struct hs_exec_event *ev = events.ringbuf_reserve(sizeof(struct hs_exec_event));
    if (!ev) {
        hs_count(1);
        return 0;
    }
    ev->ts = bpf_ktime_get_ns();
    ev->pid = bpf_get_current_pid_tgid() >> 32;
    ev->uid = (u32)bpf_get_current_uid_gid();
    ev->ppid = 0;
#if HS_TASK_REAL_PARENT_OFF && HS_TASK_TGID_OFF
    u64 parent = hs_read_u64(bpf_get_current_task(), HS_TASK_REAL_PARENT_OFF);
    if (parent)
        ev->ppid = hs_read_u32(parent, HS_TASK_TGID_OFF);
#endif
    bpf_get_current_comm(&ev->comm, sizeof(ev->comm));
    unsigned short loc = args->data_loc_filename & 0xFFFF;
    bpf_probe_read_kernel_str(ev->filename, sizeof(ev->filename), (void *)args + loc);
    ev->argc = 0;
    ev->truncated = 0;
    ev->have_argv = 0;
#if HS_WITH_ARGV
    u32 old_tid = args->old_pid;
    struct hs_argv *a = parked.lookup(&old_tid);
    if (a) {
        ev->argc = a->argc;
        ev->truncated = a->truncated;
        ev->have_argv = 1;
        __builtin_memcpy(ev->args, a->args, sizeof(ev->args));
        parked.delete(&old_tid);
    }
#endif
    events.ringbuf_submit(ev, 0);
    return 0;
}
