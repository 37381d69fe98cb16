/* The VM test's workload: burns CPU for argv[1] seconds, alternating between
 * a pure user-space loop and a write(2) loop, so that the profile shows one
 * distinctive user function and kernel frames under another (named kernel
 * frames prove the service can read /proc/kallsyms).
 *
 * Build: gcc -O1 -o burner burner.c
 */
#include <fcntl.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline))

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

NOINLINE unsigned long kiln_vm_burn_user(unsigned long x)
{
	for (int i = 0; i < 50 * 1000 * 1000; i++)
		x = x * 6364136223846793005UL + 1442695040888963407UL;
	return x;
}

NOINLINE void kiln_vm_burn_syscalls(int fd)
{
	static char buf[4096];
	for (int i = 0; i < 100 * 1000; i++)
		if (write(fd, buf, sizeof buf) < 0)
			return;
}

int main(int argc, char **argv)
{
	double end = now() + (argc > 1 ? atof(argv[1]) : 20.0);
	int fd = open("/dev/null", O_WRONLY);
	volatile unsigned long sink = 1;
	while (now() < end) {
		sink = kiln_vm_burn_user(sink);
		kiln_vm_burn_syscalls(fd);
	}
	return sink == 0;
}
