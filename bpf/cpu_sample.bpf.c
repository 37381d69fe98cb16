/* cpu_sample: whole-host CPU sampling on the cpu-clock perf event.
 *
 * Minimum kernel: 5.15 (ring buffer, bounded loops, batch map operations,
 * bpf_task_pt_regs).
 * User stacks are unwound here from .eh_frame rows that user space loads
 * (see kiln.h); code without rows is walked by frame pointers.
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
#ifndef KILN_UNWIND_ROWS
#define KILN_UNWIND_ROWS 262144
#endif
#ifndef KILN_UNWIND_PAGES
#define KILN_UNWIND_PAGES 65536
#endif
#ifndef KILN_UNWIND_MAPPINGS
#define KILN_UNWIND_MAPPINGS 65536
#endif
#ifndef KILN_PID_FILTER_ENTRIES
#define KILN_PID_FILTER_ENTRIES 4096
#endif

#ifndef KILN_PY_MAX_THREADS
#define KILN_PY_MAX_THREADS 64
#endif

#define SCRATCH_USER 0
#define SCRATCH_KERNEL 1
#define SCRATCH_PYTHON 2

BPF_ARRAY(config, struct kiln_config, 1);
BPF_PERCPU_ARRAY(counters, u64, KILN_CTR_MAX);
BPF_PERCPU_ARRAY(scratch, struct kiln_stack, 3);
BPF_HASH(pid_filter, u32, u8, KILN_PID_FILTER_ENTRIES);
BPF_HASH(comm_filter, struct kiln_comm, u8, 64);
BPF_HASH(counts0, struct kiln_sample_key, struct kiln_sample_value, KILN_COUNT_ENTRIES);
BPF_HASH(counts1, struct kiln_sample_key, struct kiln_sample_value, KILN_COUNT_ENTRIES);
/* Preallocated: an on-demand allocation can fail in the timer interrupt. */
BPF_HASH(stacks0, u64, struct kiln_stack, KILN_STACK_ENTRIES);
BPF_HASH(stacks1, u64, struct kiln_stack, KILN_STACK_ENTRIES);
BPF_RINGBUF_OUTPUT(events, KILN_RINGBUF_PAGES);
BPF_ARRAY(unwind_rows, struct kiln_unwind_row, KILN_UNWIND_ROWS);
/* Written only from user space, so allocating on demand is safe here. */
BPF_F_TABLE("hash", struct kiln_page_key, struct kiln_page_val, unwind_pages, KILN_UNWIND_PAGES,
	    BPF_F_NO_PREALLOC);
BPF_LPM_TRIE(unwind_mappings, struct kiln_mapping_key, struct kiln_mapping_val, KILN_UNWIND_MAPPINGS);
/* Processes user space tracks (has mappings for): a pc outside them all is news. */
BPF_HASH(tracked, u32, u8, KILN_PID_FILTER_ENTRIES);
/* At most one UNKNOWN_PC event per process per second. */
BPF_TABLE("lru_hash", u32, u64, unknown_pc_sent, 4096);
/* CPython processes and how to read them (see kiln.h). */
BPF_HASH(py_procs, u32, struct kiln_py_proc, KILN_PID_FILTER_ENTRIES);
BPF_TABLE("lru_hash", u64, struct kiln_py_thread, py_threads, 16384);
/* A sample handed from on_cpu_sample to on_python_sample (tail call). */
struct kiln_pending {
	struct kiln_sample_key key;
	u32 half;
	u32 _pad;
};
BPF_PERCPU_ARRAY(pending, struct kiln_pending, 1);
BPF_PROG_ARRAY(py_prog, 1);

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
static __always_inline u64 leaf_caller(u64 ip, u64 sp)
{
	u64 slot = sp, ret = 0;
	u8 code[4] = {};
	u8 prev = 0;

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

/* Hide a loop index from the optimizer. Newer clang (LLVM 18, Ubuntu 24.04's
 * BCC) trusts the array's bound over the loop's own `i < DEPTH` test, drops
 * the test and unrolls into a read one slot past the array, which the
 * verifier rightly refuses. */
#define opaque(v) asm volatile("" : "+r"(v))

/* FNV-1a over the frames; 0 is reserved for "no stack". */
static __always_inline u64 stack_hash(struct kiln_stack *st)
{
	u64 h = 0xcbf29ce484222325ull;
	for (int i = 0; i < KILN_MAX_STACK_DEPTH; i++) {
		opaque(i);
		if (i >= st->len)
			break;
		h ^= st->ips[i];
		h *= 0x100000001b3ull;
	}
	h ^= st->len;
	return h ? h : 1;
}

/* The kernel stack into its scratch slot; return its hash, 0 if none. */
static __always_inline u64 kernel_stack(struct bpf_perf_event_data *ctx)
{
	u32 slot = SCRATCH_KERNEL;
	struct kiln_stack *st = scratch.lookup(&slot);
	if (!st)
		return 0;
	long n = bpf_get_stack(ctx, st->ips, sizeof(st->ips), 0);
	if (n <= 0) {
		if (n != -EFAULT && n != 0) /* EFAULT: no kernel stack here */
			count(KILN_CTR_KSTACK_ERR);
		return 0;
	}
	st->len = n / sizeof(u64);
	st->flags = 0;
	return stack_hash(st);
}

#define FIND_OK 0
#define FIND_NO_MAPPING 1 /* pc in no mapping we know of */
#define FIND_NO_TABLE 2   /* known mapping without rows: frame pointers */
#define FIND_NO_INFO 3    /* the table has nothing for this pc */

/* The unwind row for pc in process pid: LPM lookup of the mapping, page
 * lookup of the chunk, then at most KILN_CHUNK_STEPS binary-search steps. */
static __always_inline int find_row(u32 pid, u64 pc, struct kiln_unwind_row *out)
{
	struct kiln_mapping_key mk = {.prefixlen = 96, .pid = pid};
	u64 be = __builtin_bswap64(pc);
	__builtin_memcpy(mk.addr, &be, sizeof(be));
	struct kiln_mapping_val *mv = unwind_mappings.lookup(&mk);
	if (!mv)
		return FIND_NO_MAPPING;
	if (mv->flags & KILN_MAP_NO_TABLE)
		return FIND_NO_TABLE;
	u64 vaddr = pc - mv->bias;
	if ((vaddr >> KILN_PAGE_SHIFT) > 0xffffffffull || (vaddr >> KILN_FINE_SHIFT) > 0xffffffffull)
		return FIND_NO_INFO; /* a page number must fit the u32 key (user space skips these) */
	struct kiln_page_key pk = {.file_id = mv->file_id, .page = vaddr >> KILN_PAGE_SHIFT};
	struct kiln_page_val *pv = unwind_pages.lookup(&pk);
	if (!pv)
		return FIND_NO_INFO;
	if (pv->flags & KILN_PAGE_SPLIT) {
		pk.file_id |= KILN_FINE_FILE_BIT;
		pk.page = vaddr >> KILN_FINE_SHIFT;
		pv = unwind_pages.lookup(&pk);
		if (!pv)
			return FIND_NO_INFO;
	}
	u32 first = pv->first_row, left = 0, right = pv->count;
	if (right == 0)
		return FIND_NO_INFO;
	for (int i = 0; i < KILN_CHUNK_STEPS; i++) {
		if (right - left <= 1)
			break;
		u32 mid = left + (right - left) / 2;
		u32 idx = first + mid;
		struct kiln_unwind_row *r = unwind_rows.lookup(&idx);
		if (!r)
			return FIND_NO_INFO;
		if (r->pc <= vaddr)
			left = mid;
		else
			right = mid;
	}
	u32 idx = first + left;
	struct kiln_unwind_row *r = unwind_rows.lookup(&idx);
	if (!r)
		return FIND_NO_INFO;
	__builtin_memcpy(out, r, sizeof(*out));
	return FIND_OK;
}

/* A zeroed ring-buffer record of `type` for `pid`, or NULL (counted) when full. */
static __always_inline struct kiln_event *new_event(u32 type, u32 pid, u64 now)
{
	struct kiln_event *ev = events.ringbuf_reserve(sizeof(struct kiln_event));
	if (!ev) {
		count(KILN_CTR_EVENTS_LOST);
		return 0;
	}
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->type = type;
	ev->ts_ns = now;
	ev->key.pid = pid;
	return ev;
}

static __always_inline void unknown_pc(u32 pid, u64 pc, u64 now)
{
	u64 *last = unknown_pc_sent.lookup(&pid);
	if (last && now - *last < 1000000000ull)
		return;
	unknown_pc_sent.update(&pid, &now);
	struct kiln_event *ev = new_event(KILN_EV_UNKNOWN_PC, pid, now);
	if (!ev)
		return;
	ev->pc = pc;
	events.ringbuf_submit(ev, 0);
}

/* Unwind the user stack from the task's saved user registers into the
 * scratch slot; return its hash (0: none). Frames with rows are unwound by
 * their CFA rule, others by frame pointers; a stack that stops before its
 * outermost frame is flagged truncated. */
static __always_inline u64 user_stack(u32 pid, u64 *leaf_caller_out)
{
	u32 slot = SCRATCH_USER;
	struct kiln_stack *st = scratch.lookup(&slot);
	if (!st)
		return 0;
	struct task_struct *task = bpf_get_current_task_btf();
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(task);
	u64 pc = 0, sp = 0, bp = 0;
	if (bpf_probe_read_kernel(&pc, sizeof(pc), &regs->ip) != 0 ||
	    bpf_probe_read_kernel(&sp, sizeof(sp), &regs->sp) != 0 ||
	    bpf_probe_read_kernel(&bp, sizeof(bp), &regs->bp) != 0) {
		count(KILN_CTR_USTACK_ERR);
		return 0;
	}
	if (pc == 0)
		return 0; /* a kernel thread: its saved user registers are zero */
	int tracked_pid = tracked.lookup(&pid) != 0;
	int complete = 0;
	u32 n = 0;
	struct kiln_unwind_row row = {};

	for (int i = 0; i < KILN_MAX_STACK_DEPTH; i++) {
		st->ips[i] = pc;
		n = i + 1;
		/* return addresses point after the call: look up the call itself */
		int found = find_row(pid, i == 0 ? pc : pc - 1, &row);
		u64 cfa, ra = 0;
		if (found == FIND_OK) {
			if (row.cfa_type == KILN_CFA_END) {
				complete = 1;
				break;
			}
			if (row.cfa_type == KILN_CFA_RSP)
				cfa = sp + (s64)row.cfa_offset;
			else if (row.cfa_type == KILN_CFA_RBP)
				cfa = bp + (s64)row.cfa_offset;
			else if (row.cfa_type == KILN_CFA_PLT)
				cfa = sp + 8 + ((pc & 15) >= 11 ? 8 : 0);
			else
				break; /* NONE: no rule here */
			if (bpf_probe_read_user(&ra, sizeof(ra), (void *)(cfa - 8)) != 0)
				break;
			if (row.rbp_type == KILN_RBP_OFFSET) {
				if (bpf_probe_read_user(&bp, sizeof(bp), (void *)(cfa + (s64)row.rbp_offset)) != 0)
					break;
			} else if (row.rbp_type == KILN_RBP_UNDEF) {
				bp = 0;
			}
			sp = cfa;
			count(KILN_CTR_FRAMES_TABLE);
		} else if (found == FIND_NO_INFO) {
			break; /* a table that does not cover pc: do not guess */
		} else {
			if (found == FIND_NO_MAPPING && tracked_pid)
				unknown_pc(pid, pc, bpf_ktime_get_ns());
			if (i == 0)
				*leaf_caller_out = leaf_caller(pc, sp);
			if (bp == 0) {
				complete = 1; /* the ABI's outermost frame has rbp = 0 */
				break;
			}
			u64 next_bp = 0;
			if (bpf_probe_read_user(&ra, sizeof(ra), (void *)(bp + 8)) != 0 ||
			    bpf_probe_read_user(&next_bp, sizeof(next_bp), (void *)bp) != 0)
				break;
			sp = bp + 16;
			bp = next_bp;
			count(KILN_CTR_FRAMES_FP);
		}
		if (ra == 0) {
			complete = 1;
			break;
		}
		pc = ra;
	}
	st->len = n;
	st->flags = complete ? 0 : KILN_STACK_TRUNCATED;
	if (!complete)
		count(KILN_CTR_TRUNCATED);
	return stack_hash(st);
}

/* ---- Python stacks ------------------------------------------------------ */

static __always_inline int read_u64(u64 *out, u64 addr)
{
	return bpf_probe_read_user(out, sizeof(*out), (void *)addr);
}

/* pthread_self() of the current thread: its fs base on x86-64 (glibc and
 * musl). The offset of task_struct.thread.fsbase comes from the running
 * kernel's BTF; without it, pre-3.11 threads cannot be matched. */
static __always_inline u64 current_fs_base(void)
{
#ifdef KILN_TASK_FSBASE_OFFSET
	u64 fs = 0;
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	bpf_probe_read_kernel(&fs, sizeof(fs), (u8 *)task + KILN_TASK_FSBASE_OFFSET);
	return fs;
#else
	return 0;
#endif
}

/* The sampled thread's PyThreadState, 0 if it has none. A hit in the
 * py_threads cache is checked (its id field must still match) before use.
 * A miss is remembered for 10 ms, so a thread that never runs Python costs
 * a walk of the thread list at most that often, while a new thread (whose
 * id CPython fills in only once it runs) is found almost at once. */
static __always_inline u64 find_tstate(struct kiln_py_proc *pp, u32 pid, u32 tid, u64 now)
{
	u64 want = 0, id = 0;
	u32 id_off;
	if (pp->tstate_native_thread_id != KILN_PY_ABSENT) {
		want = tid;
		id_off = pp->tstate_native_thread_id;
	} else {
		want = current_fs_base();
		id_off = pp->tstate_thread_id;
		if (!want)
			return 0;
	}
	u64 key = ((u64)pid << 32) | tid;
	struct kiln_py_thread *cached = py_threads.lookup(&key);
	if (cached) {
		u64 ts = cached->tstate;
		if (ts && read_u64(&id, ts + id_off) == 0 && id == want)
			return ts;
		if (!ts && now - cached->checked_ns < 10000000ull)
			return 0;
	}
	u64 interp = 0, ts = 0, found = 0;
	if (read_u64(&interp, pp->runtime + pp->runtime_interpreters_head) != 0 || !interp)
		return 0;
	if (read_u64(&ts, interp + pp->interp_tstate_head) != 0)
		return 0;
	for (int i = 0; i < KILN_PY_MAX_THREADS; i++) {
		if (!ts)
			break;
		if (read_u64(&id, ts + id_off) != 0)
			break;
		if (id == want) {
			found = ts;
			break;
		}
		if (read_u64(&ts, ts + pp->tstate_next) != 0)
			break;
	}
	struct kiln_py_thread v = {.tstate = found, .checked_ns = now};
	py_threads.update(&key, &v);
	return found;
}

/* The instruction a frame is at, in code units, or KILN_PY_NO_INSTR. */
static __always_inline u64 frame_instr(struct kiln_py_proc *pp, u64 frame, u64 code)
{
	u64 units = KILN_PY_NO_INSTR;
	if (pp->instr_kind == KILN_PY_INSTR_POINTER) {
		u64 ip = 0, first = code + pp->code_bytecode;
		if (read_u64(&ip, frame + pp->frame_instr) == 0 && ip >= first)
			units = (ip - first) / 2;
	} else {
		s32 lasti = -1;
		if (bpf_probe_read_user(&lasti, sizeof(lasti), (void *)(frame + pp->frame_instr)) == 0 &&
		    lasti >= 0)
			units = pp->instr_kind == KILN_PY_LASTI_BYTES ? lasti / 2 : lasti;
	}
	return units > KILN_PY_INSTR_MASK ? KILN_PY_NO_INSTR : units;
}

/* Walk the thread's Python frames into the Python scratch slot; return the
 * stack's hash, 0 for none (not Python, no frame now, or bad memory: then
 * the sample keeps its native frames only). */
static __always_inline u64 python_stack(u32 pid, u32 tid, u64 now)
{
	struct kiln_py_proc *pp = py_procs.lookup(&pid);
	if (!pp)
		return 0;
	u64 ts = find_tstate(pp, pid, tid, now);
	if (!ts) {
		count(KILN_CTR_PY_NO_THREAD);
		return 0;
	}
	u32 slot = SCRATCH_PYTHON;
	struct kiln_stack *st = scratch.lookup(&slot);
	if (!st)
		return 0;
	u64 frame = 0, code = 0, back = 0, type = 0;
	if (read_u64(&frame, ts + pp->tstate_frame) != 0)
		goto bad;
	if (frame && pp->cframe_current_frame != KILN_PY_ABSENT &&
	    read_u64(&frame, frame + pp->cframe_current_frame) != 0)
		goto bad;
	if (!frame)
		return 0; /* the thread is not running Python code now */
	u32 n = 0;
	for (int i = 0; i < KILN_MAX_STACK_DEPTH; i++) {
		if (!frame)
			break;
		if (read_u64(&code, frame + pp->frame_code) != 0 ||
		    read_u64(&back, frame + pp->frame_back) != 0)
			goto bad;
		u8 owner = 0;
		if (pp->frame_owner != KILN_PY_ABSENT &&
		    bpf_probe_read_user(&owner, 1, (void *)(frame + pp->frame_owner)) != 0)
			goto bad;
		if (pp->frame_owner != KILN_PY_ABSENT && owner == pp->owner_cstack) {
			/* The shim an eval loop call starts with (3.12+): a 0 entry
			 * tells user space the frame before was that call's first.
			 * Every iteration writes one slot, so the verifier sees one
			 * n per iteration rather than every count of skipped shims. */
			st->ips[i] = 0;
		} else {
			if (read_u64(&type, code + 8) != 0 || type != pp->code_type)
				goto bad; /* not a code object: freed or reused memory */
			u64 entry = 0;
			if (pp->version < 0x030b) {
				entry = KILN_PY_ENTRY; /* one eval loop call per frame */
			} else if (pp->frame_is_entry != KILN_PY_ABSENT) {
				u8 e = 0;
				if (bpf_probe_read_user(&e, 1, (void *)(frame + pp->frame_is_entry)) != 0)
					goto bad;
				entry = e ? KILN_PY_ENTRY : 0;
			}
			st->ips[i] = ((code >> 3) & ((1ull << KILN_PY_CODE_BITS) - 1)) |
				     (frame_instr(pp, frame, code) << KILN_PY_CODE_BITS) | entry;
		}
		n = i + 1;
		frame = back;
	}
	if (n == 0)
		return 0;
	st->len = n;
	st->flags = frame ? KILN_STACK_TRUNCATED : 0;
	count(KILN_CTR_PY_STACKS);
	return stack_hash(st);
bad:
	count(KILN_CTR_PY_READ_ERR);
	return 0;
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
	struct kiln_event *ev = new_event(KILN_EV_NEW_KEY, key->pid, now);
	if (!ev)
		return;
	ev->half = half;
	__builtin_memcpy(&ev->key, key, sizeof(*key));
	events.ringbuf_submit(ev, 0);
}

/* Store a sample's stacks (from the scratch slots) and count it. */
static __always_inline void finish(struct kiln_sample_key *key, u32 half)
{
	u32 user_slot = SCRATCH_USER, kernel_slot = SCRATCH_KERNEL, py_slot = SCRATCH_PYTHON;
	struct kiln_stack *ust = scratch.lookup(&user_slot);
	struct kiln_stack *kst = scratch.lookup(&kernel_slot);
	struct kiln_stack *pst = scratch.lookup(&py_slot);
	if (!ust || !kst || !pst)
		return;
	u64 now = bpf_ktime_get_ns();
	struct kiln_sample_value init = {.count = 1, .first_ns = now, .last_ns = now};
	struct kiln_sample_value *v;
	int inserted = 0;

	/* Two spelled-out halves: BCC's map rewriting does not see through macros. */
	if (half == 0) {
		if (key->ustack && stored(stacks0.insert(&key->ustack, ust)) != 0)
			key->ustack = 0;
		if (key->kstack && stored(stacks0.insert(&key->kstack, kst)) != 0)
			key->kstack = 0;
		if (key->pystack && stored(stacks0.insert(&key->pystack, pst)) != 0)
			key->pystack = 0;
		v = counts0.lookup(key);
		if (!v) {
			inserted = counts0.insert(key, &init);
			if (inserted == -EEXIST) {
				v = counts0.lookup(key); /* another CPU inserted it first */
				inserted = 0;
			}
		}
	} else {
		if (key->ustack && stored(stacks1.insert(&key->ustack, ust)) != 0)
			key->ustack = 0;
		if (key->kstack && stored(stacks1.insert(&key->kstack, kst)) != 0)
			key->kstack = 0;
		if (key->pystack && stored(stacks1.insert(&key->pystack, pst)) != 0)
			key->pystack = 0;
		v = counts1.lookup(key);
		if (!v) {
			inserted = counts1.insert(key, &init);
			if (inserted == -EEXIST) {
				v = counts1.lookup(key);
				inserted = 0;
			}
		}
	}
	record(key, half, now, v, inserted);
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
	if (pid != 0) {
		key.ustack = user_stack(pid, &key.leaf_caller);
		if (key.leaf_caller)
			count(KILN_CTR_LEAF_FIXED);
	}
	if (flags & KILN_F_KERNEL_STACKS)
		key.kstack = kernel_stack(ctx);
#ifndef KILN_NO_PYTHON
	if (pid != 0 && py_procs.lookup(&pid)) {
		/* The Python walk runs in its own program: one program with both
		 * walks is more than older verifiers (6.1) can follow. */
		struct kiln_pending *p = pending.lookup(&zero);
		if (p) {
			__builtin_memcpy(&p->key, &key, sizeof(key));
			p->half = half;
			py_prog.call(ctx, 0); /* does not return when it runs */
		}
	}
#endif
	finish(&key, half);
	return 0;
}

/* Tail-called for samples of CPython processes: walk the Python stack,
 * then store the sample like on_cpu_sample would have. */
int on_python_sample(struct bpf_perf_event_data *ctx)
{
	u32 zero = 0;
	struct kiln_pending *p = pending.lookup(&zero);
	if (!p)
		return 0;
	struct kiln_sample_key key = {};
	__builtin_memcpy(&key, &p->key, sizeof(key));
	key.pystack = python_stack(key.pid, key.tid, bpf_ktime_get_ns());
	finish(&key, p->half);
	return 0;
}


/* Process lifecycle, so user space reads a new image's maps right after
 * exec and keeps an exited process's data for samples taken before exit. */
static __always_inline void lifecycle_event(u32 type, u32 pid)
{
	u32 zero = 0;
	struct kiln_config *cfg = config.lookup(&zero);
	if (!cfg)
		return;
	if ((cfg->flags & KILN_F_FILTER_PIDS) && !pid_filter.lookup(&pid))
		return;
	struct kiln_event *ev = new_event(type, pid, bpf_ktime_get_ns());
	if (!ev)
		return;
	bpf_get_current_comm(ev->key.comm, sizeof(ev->key.comm));
	events.ringbuf_submit(ev, 0);
}

TRACEPOINT_PROBE(sched, sched_process_exec)
{
	u32 pid = bpf_get_current_pid_tgid() >> 32;
	py_procs.delete(&pid); /* a new image: user space looks for Python again */
	lifecycle_event(KILN_EV_EXEC, pid);
	return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exit)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 pid = id >> 32;
	if ((u32)id == pid) { /* the thread group leader: the process */
		py_procs.delete(&pid);
		lifecycle_event(KILN_EV_EXIT, pid);
	}
	return 0;
}
