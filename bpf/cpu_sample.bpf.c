/* cpu_sample: whole-host CPU sampling on the cpu-clock perf event.
 *
 * Minimum kernel: 5.8 (ring buffer, bounded loops, batch map operations).
 * Emits: per-window counts in counts0/counts1 keyed by struct
 * kiln_sample_key; stacks in stacks0/stacks1 keyed by a 64-bit hash of
 * their frames (no bucket collisions, unlike BPF_STACK_TRACE's ids); one
 * struct kiln_event on `events` per new key; loss counters in `counters`.
 *
 * The maps are double-buffered: user space flips config.active, waits for
 * programs in flight to finish, then drains the idle half, so no increment
 * is lost to a read racing a write.
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

#define SCRATCH_USER 0
#define SCRATCH_KERNEL 1

BPF_ARRAY(config, struct kiln_config, 1);
BPF_PERCPU_ARRAY(counters, u64, KILN_CTR_MAX);
BPF_PERCPU_ARRAY(scratch, struct kiln_stack, 2);
BPF_HASH(pid_filter, u32, u8, KILN_PID_FILTER_ENTRIES);
BPF_HASH(comm_filter, struct kiln_comm, u8, 64);
BPF_HASH(counts0, struct kiln_sample_key, struct kiln_sample_value, KILN_COUNT_ENTRIES);
BPF_HASH(counts1, struct kiln_sample_key, struct kiln_sample_value, KILN_COUNT_ENTRIES);
/* Preallocated: an on-demand allocation can fail in the timer interrupt. */
BPF_HASH(stacks0, u64, struct kiln_stack, KILN_STACK_ENTRIES);
BPF_HASH(stacks1, u64, struct kiln_stack, KILN_STACK_ENTRIES);
BPF_RINGBUF_OUTPUT(events, KILN_RINGBUF_PAGES);

static __always_inline void count(u32 idx)
{
	u64 *c = counters.lookup(&idx);
	if (c)
		(*c)++;
}

/* Is `ret` the return address of a direct call into code at or just
 * before `ip` (the function we are in), or of a call through a PLT stub or
 * the GOT? Then the function has pushed nothing yet and its caller is
 * [sp], though a frame-pointer walk from rbp would skip that caller. */
static __always_inline int returns_into_call_of(u64 ret, u64 ip)
{
	u8 op[6] = {};
	s32 rel = 0;
	if (bpf_probe_read_user(op, sizeof(op), (void *)(ret - 6)) != 0)
		return 0;
	if (op[0] == 0xff && op[1] == 0x15)
		return 1; /* call *disp32(%rip): -fno-plt call through the GOT */
	if (op[1] != 0xe8)
		return 0;
	__builtin_memcpy(&rel, &op[2], sizeof(rel));
	u64 target = ret + (s64)rel;
	if (target <= ip && ip - target < (1 << 20))
		return 1; /* direct call to the function containing ip */
	u8 stub[4] = {};
	if (bpf_probe_read_user(stub, sizeof(stub), (void *)target) != 0)
		return 0;
	/* PLT stub: jmp *disp(%rip), possibly after endbr64 / bnd prefix */
	if (stub[0] == 0xff && stub[1] == 0x25)
		return 1;
	if (stub[0] == 0xf3 && stub[1] == 0x0f && stub[2] == 0x1e && stub[3] == 0xfa)
		return 1;
	return stub[0] == 0xf2 && stub[1] == 0xff && stub[2] == 0x25;
}

/* A frame-pointer walk starts from rbp. Where the sampled function has not
 * set up its frame (first instruction, right after push %rbp, at ret, or a
 * leaf built without a frame: GCC's default -momit-leaf-frame-pointer), rbp
 * still holds the caller's frame and the walk skips the caller. Recover the
 * caller's return address from the stack. */
static __always_inline u64 leaf_caller(struct bpf_perf_event_data *ctx)
{
	u64 ip = ctx->regs.ip;
	u64 sp = ctx->regs.sp;
	u64 slot = sp, ret = 0;
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
		if (bpf_probe_read_user(&ret, sizeof(ret), (void *)sp) != 0)
			return 0;
		return returns_into_call_of(ret, ip) ? ret : 0;
	}
	if (bpf_probe_read_user(&ret, sizeof(ret), (void *)slot) != 0)
		return 0;
	return ret;
}

/* FNV-1a over the frames; 0 is reserved for "no stack". */
static __always_inline u64 stack_hash(struct kiln_stack *st)
{
	u64 h = 0xcbf29ce484222325ull;
	for (int i = 0; i < KILN_MAX_STACK_DEPTH; i++) {
		if (i >= st->len)
			break;
		h ^= st->ips[i];
		h *= 0x100000001b3ull;
	}
	h ^= st->len;
	return h ? h : 1;
}

/* Walk one stack into the per-CPU scratch slot; return its hash, 0 if none. */
static __always_inline u64 walk(struct bpf_perf_event_data *ctx, u32 slot, u64 flags)
{
	struct kiln_stack *st = scratch.lookup(&slot);
	if (!st)
		return 0;
	long n = bpf_get_stack(ctx, st->ips, sizeof(st->ips), flags);
	if (n <= 0) {
		if (n != -EFAULT && n != 0) /* EFAULT: no stack of that kind here */
			count(slot == SCRATCH_USER ? KILN_CTR_USTACK_ERR : KILN_CTR_KSTACK_ERR);
		return 0;
	}
	st->len = n / sizeof(u64);
	st->flags = st->len >= KILN_MAX_STACK_DEPTH ? KILN_STACK_TRUNCATED : 0;
	return stack_hash(st);
}

/* Result of inserting a stack: already there is fine, full is a loss. */
static __always_inline int stored(int err)
{
	if (err == 0 || err == -EEXIST)
		return 0;
	count(KILN_CTR_STACK_FULL);
	return err;
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
	u32 zero = 0, user_slot = SCRATCH_USER, kernel_slot = SCRATCH_KERNEL;
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
	if (pid != 0) {
		key.leaf_caller = leaf_caller(ctx);
		if (key.leaf_caller)
			count(KILN_CTR_LEAF_FIXED);
		key.ustack = walk(ctx, SCRATCH_USER, BPF_F_USER_STACK);
	}
	if (flags & KILN_F_KERNEL_STACKS)
		key.kstack = walk(ctx, SCRATCH_KERNEL, 0);

	struct kiln_stack *ust = scratch.lookup(&user_slot);
	struct kiln_stack *kst = scratch.lookup(&kernel_slot);
	if (!ust || !kst)
		return 0;
	u64 now = bpf_ktime_get_ns();
	struct kiln_sample_value init = {.count = 1, .first_ns = now, .last_ns = now};
	struct kiln_sample_value *v;
	int inserted = 0;

	/* Two spelled-out halves: BCC's map rewriting does not see through macros. */
	if (half == 0) {
		if (key.ustack && stored(stacks0.insert(&key.ustack, ust)) != 0)
			key.ustack = 0;
		if (key.kstack && stored(stacks0.insert(&key.kstack, kst)) != 0)
			key.kstack = 0;
		v = counts0.lookup(&key);
		if (!v) {
			inserted = counts0.insert(&key, &init);
			if (inserted == -EEXIST) {
				v = counts0.lookup(&key); /* another CPU inserted it first */
				inserted = 0;
			}
		}
	} else {
		if (key.ustack && stored(stacks1.insert(&key.ustack, ust)) != 0)
			key.ustack = 0;
		if (key.kstack && stored(stacks1.insert(&key.kstack, kst)) != 0)
			key.kstack = 0;
		v = counts1.lookup(&key);
		if (!v) {
			inserted = counts1.insert(&key, &init);
			if (inserted == -EEXIST) {
				v = counts1.lookup(&key);
				inserted = 0;
			}
		}
	}
	record(&key, half, now, v, inserted);
	return 0;
}
