"""Kiln installed the documented way in a real VM, checked from the host.

Boots the debootstrapped Debian 12 image (tools/vm/build-image.sh, cached in
/var/cache/kiln-vm) with its stock 6.1 kernel under qemu/KVM, copies this
checkout to where the Vagrantfile syncs it, and runs vagrant/provision.sh
with the Vagrantfile's command line. The UI port is forwarded to the host's
127.0.0.1 as Vagrant does, and everything below is checked from the host:
the service, the UI through the forward, a workload's functions in the
flamegraph and the pprof download, a second provisioning run that changes
nothing, reload, restart and upgrade keeping history, and uninstall keeping
config and data. The tests run in order on one VM.

With KILN_VM_DISTRO=ubuntu (`make vm-test-ubuntu`) the guest is Ubuntu 24.04
with its 6.8 kernel instead; everything else is the same.

Runs with `make test` wherever /dev/kvm is usable; with no /dev/kvm it skips,
and with CI=true a /dev/kvm that exists but cannot be used is a failure.
Where /dev/kvm is kvm_pvm (cloud VMs without nested VMX/SVM), which cannot
run a stock kernel, the guest runs under qemu's emulation instead and every
wait is stretched (see tools.vm.qemu.accelerator).
Build log, serial console, both provisioning runs, the service's journal and
the phase timings land in tests/vm/artifacts/.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from symbolizer.proto import profile_pb2
from tests.conftest import skip_outside_ci
from tools.vm.qemu import Vm, build_image, kvm_problem

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(__file__).parent / "artifacts"
GUEST_TREE = "/home/vagrant/kiln"
# The Vagrantfile's provisioning command, word for word.
PROVISION = f"{GUEST_TREE}/vagrant/provision.sh --listen 0.0.0.0:7070 {GUEST_TREE}"
CONF = "/etc/kiln/kiln.yaml"
USER_FN = "kiln_vm_burn_user"
SYSCALL_FN = "kiln_vm_burn_syscalls"
BURN_SECONDS = 30
# CAP_DAC_READ_SEARCH, SYS_PTRACE, SYS_ADMIN, SYS_RESOURCE, SYSLOG, PERFMON, BPF
SERVICE_CAPS = sum(1 << n for n in (2, 19, 21, 24, 34, 38, 39))

pytestmark = [pytest.mark.vm, pytest.mark.timeout(2700)]


@dataclass
class Guest:
    vm: Vm
    first_provision: str = ""
    token: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    burn_start_ms: int = 0

    def sh(self, command: str, timeout: float = 60) -> str:
        return self.vm.run(command, timeout=timeout).stdout

    def http(self, path: str, *, auth: bool = True, timeout: float = 30) -> tuple[int, bytes]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.vm.ui_port}{path}")
        if auth:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def provision(self, log_name: str) -> str:
        start = time.monotonic()
        proc = self.vm.run(f"sudo {PROVISION}", timeout=900, check=False)
        self.timings[log_name] = time.monotonic() - start
        out = proc.stdout + proc.stderr
        (ARTIFACTS / log_name).write_text(out)
        assert proc.returncode == 0, f"provision.sh failed ({proc.returncode}):\n{out[-4000:]}"
        return out

    def main_pid(self) -> int:
        return int(self.sh("systemctl show -p MainPID --value kiln.service").strip())

    def guest_ms(self) -> int:
        return int(self.sh("date +%s%3N").strip())

    def wait_healthy(self, timeout: float = 180) -> None:
        timeout *= self.vm.slowdown
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.http("/healthz", auth=False, timeout=5)[0] == 200:
                    return
            except OSError:
                pass  # refused or reset while the daemon starts
            assert time.monotonic() < deadline, f"UI not healthy after {timeout:.0f} s"
            time.sleep(1)


def repo_files() -> list[str]:
    """What a clone holds, plus files not yet committed (but not the ignored ones)."""
    out = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [f for f in out.split("\0") if f and (REPO / f).is_file()]


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guest]:
    problem = kvm_problem()
    if problem is not None:
        skip_outside_ci(problem)  # CI machines have /dev/kvm
    if os.geteuid() != 0:
        skip_outside_ci("building the VM image needs root (debootstrap, loop devices)")
    ARTIFACTS.mkdir(exist_ok=True)
    start = time.monotonic()
    image = build_image(ARTIFACTS / "build-image.log")
    timings = {"image build (or cache hit)": time.monotonic() - start}
    work = tmp_path_factory.mktemp("vm")
    g = Guest(Vm(image, work, ARTIFACTS / "console.log"), timings=timings)
    try:
        g.vm.start()
        timings["boot to ssh"] = g.vm.wait_ssh()
        g.vm.trust_host_cas()  # not part of the install: the network's, if it has one
        g.vm.put_tree(REPO, repo_files(), GUEST_TREE)
        g.first_provision = g.provision("provision-1.log")
        g.token = g.sh(f"sudo sed -n 's/^token: *//p' {CONF}").strip().strip("\"'")
        yield g
    finally:
        try:
            journal = g.vm.run("sudo journalctl -b --no-pager -u kiln.service", check=False)
            (ARTIFACTS / "journal-kiln.log").write_text(journal.stdout + journal.stderr)
        except Exception as e:  # the VM may be what failed; keep the original error
            (ARTIFACTS / "journal-kiln.log").write_text(f"could not read the journal: {e}\n")
        g.vm.stop()
        timings["total"] = time.monotonic() - start
        report = {"accelerator": f"{g.vm.accel} ({g.vm.accel_reason})", "seconds": timings}
        (ARTIFACTS / "timings.json").write_text(json.dumps(report, indent=2) + "\n")


def flame_tree(body: bytes) -> dict[str, Any]:
    """The call tree of an /api/flame answer (d3-flame-graph's nested nodes)."""
    tree: dict[str, Any] = json.loads(body)["tree"]
    return tree


def find_nodes(node: dict[str, Any], pred: Any) -> Iterator[dict[str, Any]]:
    if pred(node):
        yield node
    for child in node.get("children") or ():
        yield from find_nodes(child, pred)


def named_kernel_frame(name: str) -> bool:
    """A symbol name, not an address or a placeholder (what zeroed kallsyms give)."""
    return bool(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", name))


# -- the tests, in the order they run ------------------------------------------


def test_provisioning_runs_doctor_first_and_installs(guest: Guest) -> None:
    out = guest.first_provision
    assert "kiln doctor:" in out
    assert "[FAIL]" not in out
    assert out.index("kiln doctor:") < out.index("restarting kiln.service")
    for change in ("changed: kiln (", f"changed: config {CONF}", "changed: unit "):
        assert change in out
    # The image has the packages: provisioning found them and skipped apt.
    assert "apt-get update" not in out
    assert len(guest.token) >= 16, "a non-loopback listen address needs a generated token"
    assert guest.sh(f"sudo stat -c %a {CONF}").strip() == "600"


def test_service_is_active_enabled_and_confined(guest: Guest) -> None:
    assert guest.sh("systemctl is-active kiln.service").strip() == "active"
    assert guest.sh("systemctl is-enabled kiln.service").strip() == "enabled"
    status = guest.sh(f"cat /proc/{guest.main_pid()}/status")
    cap_eff = int(re.search(r"^CapEff:\s*(\w+)", status, re.M).group(1), 16)  # type: ignore[union-attr]
    assert cap_eff == SERVICE_CAPS, f"CapEff {cap_eff:#x}, expected {SERVICE_CAPS:#x}"
    assert re.search(r"^NoNewPrivs:\s*1", status, re.M)


def test_ui_answers_on_the_forwarded_port(guest: Guest) -> None:
    status, body = guest.http("/healthz", auth=False)
    assert status == 200 and b"ok" in body
    status, _ = guest.http("/api/flame?from=now-5m&to=now", auth=False)
    assert status == 401, "a UI beyond loopback must ask for the token"
    status, body = guest.http("/api/flame?from=now-5m&to=now")
    assert status == 200
    assert flame_tree(body)["name"] == "all"


def test_workload_shows_in_the_flamegraph(guest: Guest) -> None:
    # Built and run as the unprivileged vagrant user from /tmp: the service,
    # with its own private /tmp, must still read and symbolize it.
    guest.sh(f"gcc -O1 -o /tmp/kiln-burner {GUEST_TREE}/tests/vm/burner.c")
    guest.burn_start_ms = guest.guest_ms()
    guest.sh(f"setsid -f /tmp/kiln-burner {BURN_SECONDS} </dev/null >/dev/null 2>&1")
    start = time.monotonic()
    limit = 120 * guest.vm.slowdown
    deadline = start + limit
    while True:
        status, body = guest.http("/api/flame?from=now-5m&to=now")
        assert status == 200, body[:500]
        tree = flame_tree(body)
        user = list(find_nodes(tree, lambda n: n["name"] == USER_FN))
        sys_ = list(find_nodes(tree, lambda n: n["name"] == SYSCALL_FN))
        kernel = [
            k["name"]
            for s in sys_
            for k in find_nodes(s, lambda n: n.get("kind") == "kernel")
            if named_kernel_frame(k["name"])
        ]
        if user and sys_ and kernel:
            break
        assert time.monotonic() < deadline, (
            f"after {limit:.0f} s: {USER_FN} {bool(user)}, {SYSCALL_FN} {bool(sys_)}, "
            f"named kernel frames under it {kernel[:5]}"
        )
        time.sleep(3)
    guest.timings["workload visible in flame"] = time.monotonic() - start
    assert sum(n["value"] for n in user) > 0


def test_workload_is_in_the_downloaded_pprof(guest: Guest) -> None:
    status, body = guest.http("/download/pprof?from=now-5m&to=now")
    assert status == 200
    profile = profile_pb2.Profile()
    profile.ParseFromString(gzip.decompress(body) if body[:2] == b"\x1f\x8b" else body)
    strings = profile.string_table
    fn_ids = {f.id for f in profile.function if strings[f.name] == USER_FN}
    assert fn_ids, f"{USER_FN} is not among the pprof's functions"
    loc_ids = {
        loc.id for loc in profile.location if any(ln.function_id in fn_ids for ln in loc.line)
    }
    hits = [s for s in profile.sample if loc_ids & set(s.location_id)]
    assert hits and sum(s.value[0] for s in hits) > 0
    assert any(strings[f.name].endswith("_[k]") for f in profile.function)


def test_second_provisioning_changes_nothing(guest: Guest) -> None:
    conf_before = guest.sh(f"sudo cat {CONF}")
    pid = guest.main_pid()
    out = guest.provision("provision-2.log")
    assert "provision: nothing changed" in out
    assert "changed:" not in out and "restarting" not in out and "apt-get" not in out
    assert guest.sh(f"sudo cat {CONF}") == conf_before, "the config must be kept byte for byte"
    assert guest.main_pid() == pid, "nothing changed, so the service must not restart"


def test_reload_keeps_the_process(guest: Guest) -> None:
    pid = guest.main_pid()
    guest.sh("sudo systemctl reload kiln.service")
    time.sleep(2)
    assert guest.sh("systemctl is-active kiln.service").strip() == "active"
    assert guest.main_pid() == pid
    guest.wait_healthy(timeout=30)


def _history_has_workload(guest: Guest, until_ms: int) -> bool:
    status, body = guest.http(f"/api/flame?from={guest.burn_start_ms - 60_000}&to={until_ms}")
    assert status == 200, body[:500]
    return any(find_nodes(flame_tree(body), lambda n: n["name"] == USER_FN))


def test_restart_keeps_history(guest: Guest) -> None:
    assert guest.burn_start_ms, "needs the workload test's samples"
    before_ms = guest.guest_ms()
    pid = guest.main_pid()
    start = time.monotonic()
    guest.sh("sudo systemctl restart kiln.service", timeout=120)
    guest.wait_healthy()
    guest.timings["restart to healthy"] = time.monotonic() - start
    assert guest.main_pid() != pid
    assert _history_has_workload(guest, before_ms), "samples from before the restart are gone"


def test_upgrade_keeps_config_and_history(guest: Guest) -> None:
    # A new release is a changed tree: provisioning reinstalls and restarts.
    conf_before = guest.sh(f"sudo cat {CONF}")
    guest.sh(f"echo '# upgraded' >> {GUEST_TREE}/profiler/__init__.py")
    before_ms = guest.guest_ms()
    out = guest.provision("provision-upgrade.log")
    assert "changed: kiln (" in out and "restarting kiln.service" in out
    assert f"changed: config {CONF}" not in out
    assert guest.sh(f"sudo cat {CONF}") == conf_before
    assert guest.sh("tail -n 1 /opt/kiln/src/profiler/__init__.py").strip() == "# upgraded"
    assert _history_has_workload(guest, before_ms), "samples from before the upgrade are gone"


def test_uninstall_keeps_config_and_data(guest: Guest) -> None:
    conf_hash = hashlib.sha256(guest.sh(f"sudo cat {CONF}").encode()).hexdigest()
    guest.sh(f"sudo {GUEST_TREE}/vagrant/uninstall.sh")
    state = guest.vm.run("systemctl is-active kiln.service", check=False).stdout.strip()
    assert state in ("inactive", "unknown")
    assert guest.vm.run("test -e /opt/kiln", check=False).returncode != 0
    assert guest.vm.run("test -e /etc/systemd/system/kiln.service", check=False).returncode != 0
    assert hashlib.sha256(guest.sh(f"sudo cat {CONF}").encode()).hexdigest() == conf_hash
    assert int(guest.sh("sudo find /var/lib/kiln -type f | wc -l").strip()) > 0
