#!/usr/bin/env bash
# Installs what Kiln needs on a Debian/Ubuntu host, idempotently and quietly
# when everything is already there: BCC, kernel headers (or the distro's
# newest as a fallback, with a warning), bpftool, tracefs/debugfs mounts,
# Chromium for the UI's browser tests.
set -euo pipefail

say() { echo "setup: $*" >&2; }

[ "$(id -u)" -eq 0 ] || { say "must run as root (sudo make ...)"; exit 2; }

release=$(uname -r)
pkgs=(bpfcc-tools python3-bpfcc libbpfcc python3-venv gcc g++ bpftool linux-perf chromium)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

headers_dir="/lib/modules/$release/build"
need_headers=0
[ -e "$headers_dir/include" ] || [ -e "$headers_dir/Makefile" ] || need_headers=1

updated=0
apt_update() {
  if [ "$updated" -eq 0 ]; then
    say "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    updated=1
  fi
}
apt_install() {
  apt_update
  say "installing $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

if [ ${#missing[@]} -gt 0 ]; then
  apt_install "${missing[@]}"
fi

if [ "$need_headers" -eq 1 ]; then
  apt_update
  if apt-cache show "linux-headers-$release" >/dev/null 2>&1; then
    apt_install "linux-headers-$release"
  else
    apt_install linux-headers-amd64
    build=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1)
    src=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n 1)
    if [ -z "$build" ] || [ -z "$src" ]; then
      say "no kernel headers found after installing linux-headers-amd64"; exit 2
    fi
    mkdir -p "/lib/modules/$release"
    ln -sfn "$build" "/lib/modules/$release/build"
    ln -sfn "$src" "/lib/modules/$release/source"
    say "WARNING: no linux-headers-$release in the distro; linked $build as fallback headers" \
        "(Kiln's BPF uses only UAPI types, so this is safe)"
  fi
fi

grep -q ' /sys/kernel/tracing tracefs ' /proc/mounts || mount -t tracefs nodev /sys/kernel/tracing
grep -q ' /sys/kernel/debug debugfs ' /proc/mounts || mount -t debugfs nodev /sys/kernel/debug
exit 0
