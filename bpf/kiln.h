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
	KILN_CTR_MAX = 9,
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

#define KILN_EV_NEW_KEY 1u

/* Ring-buffer record: sent once per new key per window, so user space
 * learns of new processes while they are alive, at a cost proportional
 * to distinct stacks rather than samples. */
struct kiln_event {
	__u32 type; /* KILN_EV_* */
	__u32 half;
	__u64 ts_ns;
	struct kiln_sample_key key;
};

#ifdef __KILN_USERSPACE__
_Static_assert(sizeof(struct kiln_config) == 8, "kiln_config size");
_Static_assert(sizeof(struct kiln_sample_key) == 64, "kiln_sample_key size");
_Static_assert(sizeof(struct kiln_stack) == 1024, "kiln_stack size");
_Static_assert(sizeof(struct kiln_sample_value) == 24, "kiln_sample_value size");
_Static_assert(sizeof(struct kiln_event) == 80, "kiln_event size");
#endif

#endif /* KILN_H */
