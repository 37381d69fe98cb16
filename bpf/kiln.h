/* Kiln's kernel ABI: every struct, enum and constant that crosses between
 * the BPF programs and user space. Mirrored field by field in
 * profiler/bpf/abi.py; tests/unit/test_abi.py checks sizes and offsets.
 * Fixed-width types only, explicit padding, no kernel-internal structs.
 */
#ifndef KILN_H
#define KILN_H

#ifdef __KILN_USERSPACE__
#include <stdint.h>
typedef uint8_t __u8;
typedef uint16_t __u16;
typedef int16_t __s16;
typedef uint32_t __u32;
typedef int32_t __s32;
typedef uint64_t __u64;
#endif

#define KILN_COMM_LEN 16
#define KILN_MAX_STACK_DEPTH 127

/* Every loss or notable event is a named counter (per-CPU array index). */
enum kiln_counter {
	KILN_CTR_SAMPLES = 0,     /* perf samples the program ran for */
	KILN_CTR_IDLE = 1,        /* samples of the idle task (pid 0) */
	KILN_CTR_FILTERED = 2,    /* samples outside the pid/comm filter */
	KILN_CTR_KSTACK_ERR = 3,  /* kernel stack could not be read */
	KILN_CTR_USTACK_ERR = 4,  /* user stack could not be read */
	KILN_CTR_STACK_FULL = 5,  /* stack map full: stack lost */
	KILN_CTR_COUNTS_FULL = 6, /* counts map full: sample lost */
	KILN_CTR_EVENTS_LOST = 7, /* ring buffer full: new-key event lost */
	KILN_CTR_LEAF_FIXED = 8,  /* caller recovered at a frame-less point */
	KILN_CTR_FRAMES_TABLE = 9,  /* user frames unwound from .eh_frame rows */
	KILN_CTR_FRAMES_FP = 10,    /* user frames unwound by frame pointer (no table) */
	KILN_CTR_TRUNCATED = 11,    /* user stacks cut before their outermost frame */
	KILN_CTR_UNKNOWN_PC = 12,   /* pc outside every known mapping of a tracked process */
	KILN_CTR_PY_STACKS = 13,    /* samples with a Python stack walked */
	KILN_CTR_PY_NO_THREAD = 14, /* Python process, but no thread state for the sampled thread */
	KILN_CTR_PY_READ_ERR = 15,  /* Python walk hit unreadable or implausible memory */
	KILN_CTR_MAX = 16,
};

/* config[0].flags */
#define KILN_F_FILTER_PIDS 0x1u
#define KILN_F_FILTER_COMMS 0x2u
#define KILN_F_KERNEL_STACKS 0x4u
#define KILN_F_INCLUDE_IDLE 0x8u

struct kiln_config {
	__u32 active; /* which half of the double buffer the program writes */
	__u32 flags;  /* KILN_F_* */
};

struct kiln_comm {
	char comm[KILN_COMM_LEN];
};

/* One distinct (thread, cpu, stacks) combination in a window. */
struct kiln_sample_key {
	__u32 pid; /* tgid */
	__u32 tid;
	__u32 cpu;
	__u32 _pad;
	__u64 kstack; /* hash of the kernel stack in stacksN, 0: none */
	__u64 ustack; /* hash of the user stack in stacksN, 0: none */
	__u64 cgroup_id;
	__u64 leaf_caller; /* return address read at [sp] when the leaf had no frame yet, else 0 */
	__u64 pystack; /* hash of the Python stack in stacksN, 0: none */
	char comm[KILN_COMM_LEN];
};

/* A stack as stored in the stacksN maps, keyed by its 64-bit hash. */
struct kiln_stack {
	__u32 len;   /* frames used in ips */
	__u32 flags; /* KILN_STACK_* */
	__u64 ips[KILN_MAX_STACK_DEPTH];
};

#define KILN_STACK_TRUNCATED 0x1u /* the walk hit KILN_MAX_STACK_DEPTH */

struct kiln_sample_value {
	__u64 count;
	__u64 first_ns; /* bpf_ktime_get_ns() of the first and last sample */
	__u64 last_ns;
};

#define KILN_EV_NEW_KEY 1u     /* first sample of a key in a window */
#define KILN_EV_EXEC 2u        /* a process called exec: its maps changed */
#define KILN_EV_EXIT 3u        /* a process (thread group leader) exited */
#define KILN_EV_UNKNOWN_PC 4u  /* a tracked process ran code we have no mapping for (dlopen) */

/* Ring-buffer record. NEW_KEY is sent once per new key per window, so user
 * space learns of new processes while they are alive, at a cost
 * proportional to distinct stacks rather than samples. */
struct kiln_event {
	__u32 type; /* KILN_EV_* */
	__u32 half;
	__u64 ts_ns;
	__u64 pc; /* KILN_EV_UNKNOWN_PC: the address */
	struct kiln_sample_key key; /* key.pid (and key.comm) set for every type */
};

/* ---- table-driven unwinding (.eh_frame rows) ----------------------------
 *
 * User space turns each file's .eh_frame/.debug_frame into rows sorted by
 * pc (ELF virtual address), then cuts them into chunks of at most
 * KILN_CHUNK_ROWS rows per KILN_PAGE_SHIFT page: a chunk holds the row in
 * effect at the page's first byte, then every row starting in the page, so
 * the BPF program finds a pc's row with one hash lookup and at most
 * log2(KILN_CHUNK_ROWS) binary-search steps. A page with more rows than fit
 * is marked KILN_PAGE_SPLIT and indexed again at KILN_FINE_SHIFT granularity
 * under file_id | KILN_FINE_FILE_BIT.
 */
#define KILN_PAGE_SHIFT 12
#define KILN_FINE_SHIFT 8
#define KILN_FINE_FILE_BIT 0x80000000u
#define KILN_CHUNK_ROWS 64
#define KILN_CHUNK_STEPS 6 /* log2(KILN_CHUNK_ROWS) */

/* How to find the canonical frame address (the caller's rsp). */
#define KILN_CFA_NONE 0 /* no usable rule here (gap, unsupported): stop, truncated */
#define KILN_CFA_RSP 1  /* cfa = rsp + cfa_offset */
#define KILN_CFA_RBP 2  /* cfa = rbp + cfa_offset */
#define KILN_CFA_PLT 3  /* PLT stub: cfa = rsp + 8, + 8 more when (pc & 15) >= 11 */
#define KILN_CFA_END 4  /* return address undefined: outermost frame, stack complete */

/* Where the caller's rbp is. */
#define KILN_RBP_SAME 0   /* unchanged by this frame */
#define KILN_RBP_OFFSET 1 /* saved at cfa + rbp_offset */
#define KILN_RBP_UNDEF 2  /* not recoverable after this frame */

struct kiln_unwind_row {
	__u64 pc; /* first ELF virtual address this rule applies to */
	__s32 cfa_offset;
	__s16 rbp_offset;
	__u8 cfa_type; /* KILN_CFA_* */
	__u8 rbp_type; /* KILN_RBP_* */
};

struct kiln_page_key {
	__u32 file_id; /* | KILN_FINE_FILE_BIT for the fine index */
	__u32 page;    /* vaddr >> KILN_PAGE_SHIFT (or >> KILN_FINE_SHIFT) */
};

#define KILN_PAGE_SPLIT 0x1u /* look in the fine index instead */

struct kiln_page_val {
	__u32 first_row; /* index into the global rows array */
	__u16 count;     /* rows in the chunk, 1..KILN_CHUNK_ROWS */
	__u16 flags;     /* KILN_PAGE_* */
};

/* LPM-trie key: a process's executable mapping, as pid then big-endian
 * address prefix, so one lookup finds the mapping containing a pc. */
struct kiln_mapping_key {
	__u32 prefixlen; /* 32 (pid) + address bits */
	__u32 pid;
	__u8 addr[8]; /* big-endian */
};

#define KILN_MAP_NO_TABLE 0x1u /* known mapping without rows: use frame pointers */

struct kiln_mapping_val {
	__u32 file_id;
	__u32 flags; /* KILN_MAP_* */
	__u64 bias;  /* ELF vaddr = runtime pc - bias */
};

/* ---- Python stacks ----------------------------------------------------
 *
 * User space finds CPython in a process (symbolizer/interpreters/cpython.py)
 * and writes one kiln_py_proc per process into `py_procs`. At a sample the
 * program finds the thread's PyThreadState (by kernel tid from 3.11, by
 * pthread_self() = the thread's fs base before) and walks its frames, leaf
 * first, into a kiln_stack whose ips are packed frames:
 *   bits 0-43  code object address >> 3 (objects are 8-byte aligned)
 *   bits 44-62 instruction offset in 2-byte code units (KILN_PY_NO_INSTR: unknown)
 *   bit 63     the frame is the first one its C eval loop call ran
 * A 0 is an eval loop call's entry shim (3.12+): the frame before it was
 * that call's first.
 * User space reads the code objects and merges the frames into the native
 * stack in place of the eval-loop frames.
 */
#define KILN_PY_ABSENT 0xffffu /* an offset this version does not have */
#define KILN_PY_CODE_BITS 44
#define KILN_PY_INSTR_MASK 0x7ffffull
#define KILN_PY_NO_INSTR 0x7ffffull
#define KILN_PY_ENTRY (1ull << 63)

/* How a frame records its instruction (symbolizer.interpreters.cpython INSTR_*). */
#define KILN_PY_LASTI_BYTES 0
#define KILN_PY_LASTI_UNITS 1
#define KILN_PY_INSTR_POINTER 2

struct kiln_py_proc {
	__u64 runtime;   /* &_PyRuntime in the process */
	__u64 code_type; /* &PyCode_Type: every frame's code object must have it */
	__u16 version;   /* major << 8 | minor */
	__u16 runtime_interpreters_head;
	__u16 interp_tstate_head;
	__u16 tstate_next;
	__u16 tstate_native_thread_id; /* KILN_PY_ABSENT: match tstate_thread_id to fs base */
	__u16 tstate_thread_id;
	__u16 tstate_frame;
	__u16 cframe_current_frame; /* KILN_PY_ABSENT: tstate_frame is the frame itself */
	__u16 frame_back;
	__u16 frame_code;
	__u16 frame_instr;
	__u16 frame_owner;    /* KILN_PY_ABSENT before 3.11 */
	__u16 frame_is_entry; /* 3.11 only */
	__u16 code_bytecode;  /* KILN_PY_INSTR_POINTER: offset of the first instruction */
	__u8 instr_kind;      /* KILN_PY_LASTI_* / KILN_PY_INSTR_POINTER */
	__u8 owner_cstack;    /* owner value of an eval loop's entry shim (3.12+), else 0xff */
	__u8 _pad[2];
};

/* Cached thread state of one thread (`py_threads`, keyed by pid << 32 | tid). */
struct kiln_py_thread {
	__u64 tstate;     /* 0: the thread had none when last looked for */
	__u64 checked_ns; /* when a miss was recorded; misses are retried after 10 ms */
};

#ifdef __KILN_USERSPACE__
_Static_assert(sizeof(struct kiln_py_proc) == 48, "kiln_py_proc size");
_Static_assert(sizeof(struct kiln_py_thread) == 16, "kiln_py_thread size");
_Static_assert(sizeof(struct kiln_unwind_row) == 16, "kiln_unwind_row size");
_Static_assert(sizeof(struct kiln_page_key) == 8, "kiln_page_key size");
_Static_assert(sizeof(struct kiln_page_val) == 8, "kiln_page_val size");
_Static_assert(sizeof(struct kiln_mapping_key) == 16, "kiln_mapping_key size");
_Static_assert(sizeof(struct kiln_mapping_val) == 16, "kiln_mapping_val size");
_Static_assert(sizeof(struct kiln_config) == 8, "kiln_config size");
_Static_assert(sizeof(struct kiln_sample_key) == 72, "kiln_sample_key size");
_Static_assert(sizeof(struct kiln_stack) == 1024, "kiln_stack size");
_Static_assert(sizeof(struct kiln_sample_value) == 24, "kiln_sample_value size");
_Static_assert(sizeof(struct kiln_event) == 96, "kiln_event size");
#endif

#endif /* KILN_H */
