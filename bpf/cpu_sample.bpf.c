/* cpu_sample: whole-host CPU sampling on the cpu-clock perf event.
 *
 * Minimum kernel: 5.8 (ring buffer, batch map operations).
 * Emits: per-window counts in counts0/counts1 keyed by struct
 * kiln_sample_key, stacks interned in stacks0/stacks1, one struct
 * kiln_event on `events` per new key, loss counters in `counters`.
 *
 * The maps are double-buffered: user space flips config.active, waits for
 * programs in flight to finish, then drains and clears the idle half, so no
 * increment is lost to a read racing a write.
 *
 * Sizes come from -D flags set by profiler/bpf/loader.py.
 */
#include <uapi/linux/bpf_perf_event.h>
#include <uapi/linux/ptrace.h>
#include "kiln.h"

#ifndef KILN_STACK_ENTRIES
#define KILN_STACK_ENTRIES 8192
#endif
#ifndef KILN_COUNT_ENTRIES
#define KILN_COUNT_ENTRIES 16384
#endif
#ifndef KILN_RINGBUF_PAGES
#define KILN_RINGBUF_PAGES 64
#endif
#ifndef KILN_PID_FILTER_ENTRIES
#define KILN_PID_FILTER_ENTRIES 4096
#endif

BPF_ARRAY(config, struct kiln_config, 1);
BPF_PERCPU_ARRAY(counters, u64, KILN_CTR_MAX);
BPF_HASH(pid_filter, u32, u8, KILN_PID_FILTER_ENTRIES);
BPF_HASH(comm_filter, struct kiln_comm, u8, 64);
BPF_HASH(counts0, struct kiln_sample_key, struct kiln_sample_value, KILN_COUNT_ENTRIES);
BPF_HASH(counts1, struct kiln_sample_key, struct kiln_sample_value, KILN_COUNT_ENTRIES);
BPF_STACK_TRACE(stacks0, KILN_STACK_ENTRIES);
BPF_STACK_TRACE(stacks1, KILN_STACK_ENTRIES);
BPF_RINGBUF_OUTPUT(events, KILN_RINGBUF_PAGES);

static __always_inline void count(u32 idx)
{
	u64 *c = counters.lookup(&idx);
	if (c)
		(*c)++;
}

/* A frame-pointer walk starts from rbp. At a function's first instruction
 * (endbr64 / push %rbp), right after the push, or at its `ret`, rbp still
 * holds the caller's frame, so the walk skips the caller. Recover it from
 * the stack: the return address is at [sp] (or [sp+8] after the push). */
static __always_inline u64 leaf_caller(struct bpf_perf_event_data *ctx)
{
	u64 ip = ctx->regs.ip;
	u64 sp = ctx->regs.sp;
	u64 slot = 0, ret = 0;
	u8 code[4] = {};
	u8 prev = 0;

	if ((ctx->regs.cs & 3) != 3)
		return 0; /* kernel mode: the user registers are not in ctx */
	if (bpf_probe_read_user(code, sizeof(code), (void *)ip) != 0)
		return 0;
	if (code[0] == 0x55 || code[0] == 0xc3) {
		slot = sp; /* push %rbp not yet done, or at ret */
	} else if (code[0] == 0xf3 && code[1] == 0x0f && code[2] == 0x1e && code[3] == 0xfa) {
		slot = sp; /* endbr64 at function entry */
	} else if (code[0] == 0x48 && code[1] == 0x89 && code[2] == 0xe5) {
		if (bpf_probe_read_user(&prev, 1, (void *)(ip - 1)) != 0 || prev != 0x55)
			return 0;
		slot = sp + 8; /* after push %rbp, before mov %rsp,%rbp */
	} else {
		return 0;
	}
	if (bpf_probe_read_user(&ret, sizeof(ret), (void *)slot) != 0)
		return 0;
	return ret;
}

static __always_inline void stack_error(int id, u32 which)
{
	if (id == -EFAULT)
		return; /* no stack of that kind (user mode / kernel thread) */
	count(id == -ENOMEM || id == -EEXIST ? KILN_CTR_STACK_FULL : which);
}

static __always_inline void record(struct kiln_sample_key *key, u32 half, u64 now,
				   struct kiln_sample_value *v, int inserted)
{
	if (v) {
		__sync_fetch_and_add(&v->count, 1);
		v->last_ns = now;
		return;
	}
	if (inserted != 0) {
		count(KILN_CTR_COUNTS_FULL);
		return;
	}
	struct kiln_event *ev = events.ringbuf_reserve(sizeof(struct kiln_event));
	if (!ev) {
		count(KILN_CTR_EVENTS_LOST);
		return;
	}
	ev->type = KILN_EV_NEW_KEY;
	ev->half = half;
	ev->ts_ns = now;
	__builtin_memcpy(&ev->key, key, sizeof(*key));
	events.ringbuf_submit(ev, 0);
}

int on_cpu_sample(struct bpf_perf_event_data *ctx)
{
	u32 zero = 0;
	u64 id = bpf_get_current_pid_tgid();
	u32 pid = id >> 32;
	struct kiln_config *cfg = config.lookup(&zero);
	if (!cfg)
		return 0;
	u32 flags = cfg->flags;
	u32 half = cfg->active & 1;

	count(KILN_CTR_SAMPLES);
	if (pid == 0) {
		count(KILN_CTR_IDLE);
		if (!(flags & KILN_F_INCLUDE_IDLE))
			return 0;
	}
	if ((flags & KILN_F_FILTER_PIDS) && !pid_filter.lookup(&pid)) {
		count(KILN_CTR_FILTERED);
		return 0;
	}

	struct kiln_sample_key key = {};
	bpf_get_current_comm(key.comm, sizeof(key.comm));
	if (flags & KILN_F_FILTER_COMMS) {
		struct kiln_comm c = {};
		__builtin_memcpy(c.comm, key.comm, sizeof(c.comm));
		if (!comm_filter.lookup(&c)) {
			count(KILN_CTR_FILTERED);
			return 0;
		}
	}
	key.pid = pid;
	key.tid = (u32)id;
	key.cpu = bpf_get_smp_processor_id();
	key.cgroup_id = bpf_get_current_cgroup_id();
	key.kstack_id = -1;
	key.ustack_id = -1;
	if (pid != 0)
		key.leaf_caller = leaf_caller(ctx);
	if (key.leaf_caller)
		count(KILN_CTR_LEAF_FIXED);

	u64 now = bpf_ktime_get_ns();
	struct kiln_sample_value init = {.count = 1, .first_ns = now, .last_ns = now};
	struct kiln_sample_value *v;
	int inserted = 0;

	/* Two spelled-out halves: BCC's map rewriting does not see through macros. */
	if (half == 0) {
		if (flags & KILN_F_KERNEL_STACKS)
			key.kstack_id = stacks0.get_stackid(ctx, 0);
		if (pid != 0)
			key.ustack_id = stacks0.get_stackid(ctx, BPF_F_USER_STACK);
		v = counts0.lookup(&key);
		if (!v) {
			inserted = counts0.insert(&key, &init);
			if (inserted == -EEXIST) {
				v = counts0.lookup(&key); /* another CPU inserted it first */
				inserted = 0;
			}
		}
	} else {
		if (flags & KILN_F_KERNEL_STACKS)
			key.kstack_id = stacks1.get_stackid(ctx, 0);
		if (pid != 0)
			key.ustack_id = stacks1.get_stackid(ctx, BPF_F_USER_STACK);
		v = counts1.lookup(&key);
		if (!v) {
			inserted = counts1.insert(&key, &init);
			if (inserted == -EEXIST) {
				v = counts1.lookup(&key);
				inserted = 0;
			}
		}
	}
	if (key.kstack_id < 0 && (flags & KILN_F_KERNEL_STACKS))
		stack_error(key.kstack_id, KILN_CTR_KSTACK_ERR);
	if (key.ustack_id < 0 && pid != 0)
		stack_error(key.ustack_id, KILN_CTR_USTACK_ERR);
	record(&key, half, now, v, inserted);
	return 0;
}
