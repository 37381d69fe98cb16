"""Boot the image from tools/vm/build-image.sh under qemu/KVM and talk to it over ssh.

The VM runs on a throwaway qcow2 overlay (the cached image is never
written), with user-mode networking: the guest's sshd and Kiln's UI port are
forwarded to free ports on the host's 127.0.0.1, the way Vagrant forwards
them. The serial console goes to a log file. Used by tests/vm; by hand:

    python3 -m tools.vm.qemu    # boots, prints the ssh and UI addresses, waits for Ctrl-C
    KILN_VM_DISTRO=ubuntu python3 -m tools.vm.qemu    # the Ubuntu 24.04 image
"""

from __future__ import annotations

import ctypes
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

REPO = Path(__file__).resolve().parents[2]
BUILD_IMAGE = REPO / "tools" / "vm" / "build-image.sh"
GUEST_UI_PORT = 7070


class VmError(RuntimeError):
    pass


def kvm_problem() -> str | None:
    """Why this host cannot run a KVM guest, or None."""
    if not os.path.exists("/dev/kvm"):
        return "no /dev/kvm (no hardware virtualization here)"
    try:
        fd = os.open("/dev/kvm", os.O_RDWR)
    except OSError as e:
        return f"/dev/kvm is not usable: {e.strerror}"
    os.close(fd)
    return None


def accelerator() -> tuple[str, str]:
    """("kvm" or "tcg", why): what can run Debian's stock kernel here.

    /dev/kvm is not always hardware virtualization: under kvm_pvm (the
    pagetable-based KVM of some cloud VMs that offer no nested VMX/SVM) only
    guest kernels built for PVM run, and a stock kernel hangs as it enters
    long mode. There the VM runs under qemu's own emulation (TCG), far
    slower but the same machine. KILN_VM_ACCEL=kvm|tcg overrides.
    """
    forced = os.environ.get("KILN_VM_ACCEL", "")
    if forced in ("kvm", "tcg"):
        return forced, "KILN_VM_ACCEL"
    for module in ("kvm_intel", "kvm_amd"):
        if os.path.isdir(f"/sys/module/{module}"):
            return "kvm", f"{module} is loaded"
    if os.path.isdir("/sys/module/kvm_pvm"):
        return "tcg", "/dev/kvm is kvm_pvm, which runs only PVM guest kernels"
    return "kvm", "no hardware KVM module seen; trying /dev/kvm anyway"


def distro() -> str:
    """The guest distribution: debian (the default, what `make test` boots) or
    ubuntu (`make vm-test-ubuntu`), from KILN_VM_DISTRO."""
    return os.environ.get("KILN_VM_DISTRO", "") or "debian"


def build_image(log: Path, timeout: float = 1800) -> Path:
    """Build (or reuse the cached) image of distro(); return its directory."""
    with log.open("w") as f:
        proc = subprocess.run(
            [str(BUILD_IMAGE), "--distro", distro()],
            stdout=subprocess.PIPE,
            stderr=f,
            text=True,
            timeout=timeout,
        )
    if proc.returncode != 0:
        raise VmError(f"build-image.sh failed ({proc.returncode}); see {log}")
    return Path(proc.stdout.strip().splitlines()[-1])


def _die_with_parent() -> None:
    """In the child: SIGKILL when the process that started qemu dies, however it
    dies, so that no VM outlives a killed test run."""
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Vm:
    """One booted guest; use as a context manager so qemu always dies."""

    def __init__(self, image_dir: Path, work_dir: Path, console_log: Path) -> None:
        self.image_dir = image_dir
        self.work_dir = work_dir
        self.console_log = console_log
        self.ssh_port = free_port()
        self.ui_port = free_port()
        self.key = work_dir / "ssh_key"
        self.proc: subprocess.Popen[bytes] | None = None
        self.accel, self.accel_reason = accelerator()
        # Emulation is roughly ten times slower; waits scale with it.
        self.slowdown = 1.0 if self.accel == "kvm" else 4.0

    def __enter__(self) -> Vm:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        overlay = self.work_dir / "overlay.qcow2"
        base = self.image_dir / "disk.qcow2"
        subprocess.run(
            [
                "qemu-img",
                "create",
                "-q",
                "-f",
                "qcow2",
                "-F",
                "qcow2",
                "-b",
                str(base),
                str(overlay),
            ],
            check=True,
        )
        # ssh refuses a key others can read; the cache's copy belongs to root.
        self.key.write_bytes((self.image_dir / "ssh_key").read_bytes())
        self.key.chmod(0o600)
        fwd = (
            f"hostfwd=tcp:127.0.0.1:{self.ssh_port}-:22,"
            f"hostfwd=tcp:127.0.0.1:{self.ui_port}-:{GUEST_UI_PORT}"
        )
        cmd = [
            "qemu-system-x86_64",
            "-name", "kiln-vm-test",
            *self.accel_args(),
            "-smp", "2",
            "-m", "2048",
            "-display", "none",
            "-monitor", "none",
            "-serial", f"file:{self.console_log}",
            # The overlay is thrown away, so its writes need not reach the disk.
            "-drive", f"file={overlay},if=virtio,format=qcow2,cache=unsafe",
            "-netdev", f"user,id=net0,{fwd}",
            "-device", "virtio-net-pci,netdev=net0",
            "-device", "virtio-rng-pci",
            "-no-reboot",
        ]  # fmt: skip
        with (self.work_dir / "qemu.stderr").open("wb") as err:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                start_new_session=True, preexec_fn=_die_with_parent,
            )  # fmt: skip

    def accel_args(self) -> list[str]:
        if self.accel == "tcg":
            # Nehalem has the SSE4.2/POPCNT (x86-64-v2) numpy's wheels require and
            # no AVX: qemu 7.2's AVX2 emulation miscomputes numpy's x86-64-v3
            # argsort (np.unique returned duplicates, so the store looked damaged).
            return ["-machine", "pc", "-accel", "tcg,thread=multi", "-cpu", "Nehalem"]
        # Without arch-capabilities: nested under recent host kernels, qemu 7.2
        # fails to set that MSR and aborts.
        return ["-machine", "pc,accel=kvm", "-cpu", "host,-arch-capabilities"]

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def ssh_argv(self) -> list[str]:
        return [
            "ssh", "-q", "-i", str(self.key), "-p", str(self.ssh_port),
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=5",
            "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=6",
            "vagrant@127.0.0.1",
        ]  # fmt: skip

    def run(
        self, command: str, *, timeout: float = 60, check: bool = True, stdin: bytes | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a shell command in the guest as the vagrant user (sudo is passwordless)."""
        self._check_alive()
        timeout *= self.slowdown
        proc = subprocess.run(
            [*self.ssh_argv(), command],
            input=stdin.decode("latin-1") if stdin is not None else None,
            capture_output=True, text=True, timeout=timeout, errors="replace",
        )  # fmt: skip
        if check and proc.returncode != 0:
            raise VmError(
                f"guest command failed ({proc.returncode}): {command}\n"
                f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
            )
        return proc

    def put_tree(self, root: Path, files: list[str], dest: str, timeout: float = 120) -> None:
        """Copy `files` (relative to `root`) into `dest` in the guest, as a tar over ssh."""
        self._check_alive()
        q = shlex.quote(dest)
        listing = self.work_dir / "put-tree.list"
        listing.write_bytes(b"".join(f.encode() + b"\0" for f in files))
        with subprocess.Popen(
            ["tar", "-C", str(root), "--null", "-T", str(listing), "-czf", "-"],
            stdout=subprocess.PIPE,
        ) as tar:  # fmt: skip
            untar = subprocess.run(
                [*self.ssh_argv(), f"rm -rf {q} && mkdir -p {q} && tar -xzf - -C {q}"],
                stdin=tar.stdout, capture_output=True, timeout=timeout,
            )  # fmt: skip
            tar.wait(timeout=timeout)
        if tar.returncode != 0 or untar.returncode != 0:
            raise VmError(f"copying {root} to the guest failed: {untar.stderr.decode()}")

    def trust_host_cas(self) -> int:
        """Make the guest trust the host's local CA certificates; return how many.

        A host behind a TLS-inspecting proxy trusts the proxy's CA through
        /usr/local/share/ca-certificates; the guest's HTTPS (pip, for one)
        goes out through the same network, so it needs the same trust. The
        certificates are appended to the bundle directly (update-ca-certificates
        takes a minute under emulation) and kept where the next run of it
        picks them up.
        """
        local = Path("/usr/local/share/ca-certificates")
        certs = sorted(str(p.relative_to(local)) for p in local.rglob("*.crt"))
        if certs:
            self.put_tree(local, certs, "/tmp/host-ca")
            self.run(
                "sudo cp -r /tmp/host-ca/. /usr/local/share/ca-certificates/ && "
                "find /tmp/host-ca -name '*.crt' -exec cat {} + "
                "| sudo tee -a /etc/ssl/certs/ca-certificates.crt >/dev/null && rm -rf /tmp/host-ca"
            )
        return len(certs)

    def wait_ssh(self, timeout: float = 180) -> float:
        """Wait until sshd answers; return the seconds it took."""
        timeout *= self.slowdown
        start = time.monotonic()
        while True:
            self._check_alive()
            try:
                if (
                    subprocess.run(
                        [*self.ssh_argv(), "true"], capture_output=True, timeout=15
                    ).returncode
                    == 0
                ):
                    return time.monotonic() - start
            except subprocess.TimeoutExpired:
                pass
            if time.monotonic() - start > timeout:
                raise VmError(f"no ssh after {timeout:.0f} s; see {self.console_log}")
            time.sleep(1)

    def _check_alive(self) -> None:
        if self.proc is None:
            raise VmError("the VM was not started")
        if self.proc.poll() is not None:
            err = (self.work_dir / "qemu.stderr").read_text(errors="replace")
            raise VmError(f"qemu exited ({self.proc.returncode}): {err.strip()}")


def main() -> int:
    import tempfile

    if (problem := kvm_problem()) is not None:
        print(problem, file=sys.stderr)
        return 2
    # SIGTERM unwinds like Ctrl-C, so the VM and its files are cleaned up.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with tempfile.TemporaryDirectory(prefix="kiln-vm-") as tmp:
        work = Path(tmp)
        image = build_image(work / "build-image.log")
        with Vm(image, work, work / "console.log") as vm:
            print(f"booting with {vm.accel} ({vm.accel_reason})", flush=True)
            print(f"serial console: {vm.console_log}", flush=True)
            print(f"up after {vm.wait_ssh():.1f} s")
            vm.trust_host_cas()
            print(f"ssh:  {shlex.join(vm.ssh_argv())}")
            print(f"UI:   http://127.0.0.1:{vm.ui_port}/ (guest port {GUEST_UI_PORT})")
            print("Ctrl-C stops the VM", flush=True)
            try:
                while vm.proc is not None and vm.proc.poll() is None:
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
