#!/usr/bin/env bash
# Builds the Debian 12 VM image Kiln's VM test boots and `make box` packs
# (or, with --distro ubuntu, an Ubuntu 24.04 one for `make vm-test-ubuntu`):
# debootstrap from the distribution's archive, its stock kernel with the
# matching headers, GRUB on an MBR disk (BIOS boot, what vagrant-libvirt gives a VM),
# DHCP on any wired interface, sshd, and a `vagrant` user (password vagrant,
# passwordless sudo, Vagrant's well-known insecure key, which Vagrant swaps
# for a fresh one on the first `vagrant up`).
#
# What provisioning downloads and compiles is there already: the apt
# packages vagrant/provision.sh installs, and Kiln's virtualenv
# (/opt/kiln/venv) with Kiln's dependencies but not Kiln. Provisioning a VM
# made from the image still runs in full; it finds those present, as when it
# upgrades an installed host, and only installs Kiln itself. (That matters
# most where the VM runs without KVM, under qemu's emulation: there a fresh
# venv and its packages take over five minutes.)
#
# The image is cached under $KILN_VM_CACHE (default /var/cache/kiln-vm),
# keyed by the distribution, a hash of this script and provision.sh's package
# list, and reused until either changes. Prints the image directory
# (disk.qcow2, ssh_key).
#
#   tools/vm/build-image.sh [--distro debian|ubuntu] [--box FILE.box]
#
# Needs root (debootstrap, chroot) and installs its own tools
# (debootstrap, qemu-utils, fdisk) from apt when missing.
set -Eeuo pipefail

say() { echo "build-image: $*" >&2; }
die() { echo "build-image: error: $*" >&2; exit 1; }
trap 'echo "build-image: error: line $LINENO: $BASH_COMMAND failed" >&2' ERR

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE=${KILN_VM_CACHE:-/var/cache/kiln-vm}
DISK_GB=8

box=""
distro=${KILN_VM_DISTRO:-debian}
while [ $# -gt 0 ]; do
  case $1 in
    --box) [ $# -ge 2 ] || die "--box needs a file name"; box=$2; shift 2 ;;
    --distro) [ $# -ge 2 ] || die "--distro needs debian or ubuntu"; distro=$2; shift 2 ;;
    -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
[ "$(id -u)" -eq 0 ] || die "must run as root (debootstrap, chroot)"

case $distro in
  debian)
    SUITE=bookworm
    MIRROR=${KILN_VM_MIRROR:-http://deb.debian.org/debian}
    COMPONENTS=main
    SECURITY_MIRROR=${MIRROR%/debian}/debian-security
    KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
    KEYRING_PACKAGE=debian-archive-keyring
    SCRIPT=""
    KERNEL_PACKAGES="linux-image-amd64 linux-headers-amd64"
    ;;
  ubuntu)
    SUITE=noble
    MIRROR=${KILN_VM_MIRROR:-http://archive.ubuntu.com/ubuntu}
    COMPONENTS="main universe"  # bpfcc-tools and vagrant (for its key) are in universe
    SECURITY_MIRROR=$MIRROR
    KEYRING=/usr/share/keyrings/ubuntu-archive-keyring.gpg
    # Debian 12's debootstrap predates noble; its releases all use this script.
    SCRIPT=/usr/share/debootstrap/scripts/gutsy
    KERNEL_PACKAGES="linux-image-virtual linux-headers-virtual"
    ;;
  *) die "unknown distribution $distro: use debian or ubuntu" ;;
esac

read -r -a guest_packages <<<"$("$REPO/vagrant/provision.sh" --list-packages --distro "$distro" | tr '\n' ' ')"
key=$( { cat "$0"; printf '%s\n' "$SUITE" "$MIRROR" "${guest_packages[@]}"; } | sha256sum | cut -c1-16)
image_dir=$CACHE/$distro-$key

pack_box() {
  local out=$1 stage
  mkdir -p "$(dirname "$out")"
  stage=$(mktemp -d "$(dirname "$out")/.box.XXXXXX")
  # vagrant-libvirt's box format: a tar of metadata.json, Vagrantfile, box.img.
  ln "$image_dir/disk.qcow2" "$stage/box.img" 2>/dev/null || cp "$image_dir/disk.qcow2" "$stage/box.img"
  printf '{"provider": "libvirt", "format": "qcow2", "virtual_size": %d}\n' "$DISK_GB" >"$stage/metadata.json"
  cat >"$stage/Vagrantfile" <<'EOF'
# Defaults of the kiln-local box (built by `make box`).
Vagrant.configure("2") do |config|
  config.vm.provider :libvirt do |libvirt|
    libvirt.driver = "kvm"
    libvirt.disk_bus = "virtio"
  end
end
EOF
  say "packing $out"
  tar -C "$stage" -cf - metadata.json Vagrantfile box.img | gzip -1 >"$stage/box.tmp"
  mv "$stage/box.tmp" "$out"
  rm -rf "$stage"
  say "box ready: vagrant box add --force --name kiln-local $out"
}

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock -w 3600 9 || die "another build holds $CACHE/.lock"

if [ -f "$image_dir/ok" ]; then
  say "cached image $image_dir"
  [ -z "$box" ] || pack_box "$box"
  echo "$image_dir"
  exit 0
fi

# -- host tools ---------------------------------------------------------------

missing=()
# qemu-system-x86 and ssh are for booting the image (tools/vm/qemu.py, the VM test).
for tool in debootstrap:debootstrap qemu-img:qemu-utils sfdisk:fdisk mkfs.ext4:e2fsprogs \
            qemu-system-x86_64:qemu-system-x86 ssh:openssh-client; do
  command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
done
# Debian carries no Ubuntu keyring package: see ubuntu_keyring below.
[ -e "$KEYRING" ] || [ "$distro" = ubuntu ] || missing+=("$KEYRING_PACKAGE")
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Ubuntu's archive key, for debootstrap to check noble's Release file: the
# keyring package and the package index naming its SHA-256 are both fetched
# from the archive over HTTPS, so the TLS certificate is the trust anchor.
ubuntu_keyring() {
  local out=$CACHE/ubuntu-archive-keyring.gpg index entry file sum tmp
  if [ ! -s "$out" ]; then
    index=https://archive.ubuntu.com/ubuntu/dists/$SUITE/main/binary-amd64/Packages.gz
    entry=$(curl -fsS --max-time 120 "$index" | gzip -dc \
      | awk '/^Package: ubuntu-keyring$/ {p = 1} p && /^(Filename|SHA256):/ {print $2} /^$/ {p = 0}')
    file=$(sed -n 1p <<<"$entry"); sum=$(sed -n 2p <<<"$entry")
    [ -n "$file" ] && [ -n "$sum" ] || die "no ubuntu-keyring in $index"
    tmp=$(mktemp -d)
    curl -fsS --max-time 120 -o "$tmp/keyring.deb" "https://archive.ubuntu.com/ubuntu/$file"
    echo "$sum  $tmp/keyring.deb" | sha256sum -c --quiet - || die "ubuntu-keyring: checksum mismatch"
    dpkg-deb --fsys-tarfile "$tmp/keyring.deb" \
      | tar -x -C "$tmp" ./usr/share/keyrings/ubuntu-archive-keyring.gpg
    install -m 0644 "$tmp/usr/share/keyrings/ubuntu-archive-keyring.gpg" "$out"
    rm -rf "$tmp"
  fi
  KEYRING=$out
}
if [ "$distro" = ubuntu ] && [ ! -e "$KEYRING" ]; then ubuntu_keyring; fi

# -- root file system -------------------------------------------------------------

work=$(mktemp -d /var/tmp/kiln-vm-build.XXXXXX)
root=$work/root
cleanup() {
  set +e
  for m in "$root/proc" "$root/sys" "$root"; do
    if grep -q " $m " /proc/mounts; then umount "$m"; fi
  done
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$root"

# dpkg syncs every file it writes; on tmpfs that costs nothing. The tree is
# about 1.5 GiB, so only with plenty of memory to spare.
avail_kb=$(awk '/^MemAvailable:/ { print $2 }' /proc/meminfo)
if [ "$avail_kb" -gt $((8 * 1024 * 1024)) ]; then
  mount -t tmpfs -o size=5G,mode=0755 kiln-vm-root "$root"
fi

t0=$SECONDS
say "debootstrap $SUITE (minbase) from $MIRROR"
# shellcheck disable=SC2086  # no SCRIPT argument at all for Debian
debootstrap --variant=minbase --include=ca-certificates --keyring="$KEYRING" \
  "$SUITE" "$root" "$MIRROR" $SCRIPT \
  >"$work/debootstrap.log" 2>&1 || { tail -n 30 "$work/debootstrap.log" >&2; die "debootstrap failed"; }
say "debootstrap done in $((SECONDS - t0)) s"

in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
  DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 "$@"; }

# The chroot keeps the /dev that debootstrap made; the host's stays out of it.
mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"
cp /etc/resolv.conf "$root/etc/resolv.conf.build"
rm -f "$root/etc/resolv.conf"
cp "$root/etc/resolv.conf.build" "$root/etc/resolv.conf"
# No service may start inside the chroot.
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 0755 "$root/usr/sbin/policy-rc.d"

cat >"$root/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE $COMPONENTS
deb $MIRROR $SUITE-updates $COMPONENTS
deb $SECURITY_MIRROR $SUITE-security $COMPONENTS
EOF
echo kiln-vm >"$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tkiln-vm\n::1\tlocalhost ip6-localhost ip6-loopback\n' \
  >"$root/etc/hosts"
# GRUB's package settings, read by update-grub when the kernel is upgraded in the VM.
mkdir -p "$root/etc/default"
cat >"$root/etc/default/grub" <<'EOF'
GRUB_DEFAULT=0
GRUB_TIMEOUT=0
GRUB_DISTRIBUTOR=Debian
GRUB_CMDLINE_LINUX_DEFAULT=""
GRUB_CMDLINE_LINUX="console=tty0 console=ttyS0,115200n8"
GRUB_TERMINAL="console serial"
GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"
EOF

t0=$SECONDS
say "apt: kernel, headers, boot and provision.sh's packages"
in_root apt-get update -qq >/dev/null
# shellcheck disable=SC2086  # KERNEL_PACKAGES is a list
in_root apt-get install -y -qq --no-install-recommends \
  $KERNEL_PACKAGES grub-pc initramfs-tools zstd \
  systemd-sysv systemd-resolved udev dbus kmod iproute2 openssh-server sudo rsync \
  python3 "${guest_packages[@]}" >"$work/apt.log" 2>&1 \
  || { tail -n 30 "$work/apt.log" >&2; die "apt-get install failed in the image"; }
say "apt done in $((SECONDS - t0)) s"
# systemd-resolved's package pointed resolv.conf at its stub, which does not
# run in a chroot; the downloads below still need names resolved.
rm -f "$root/etc/resolv.conf"
cp "$root/etc/resolv.conf.build" "$root/etc/resolv.conf"

# Networking: DHCP on whatever wired interface the hypervisor gives.
cat >"$root/etc/systemd/network/80-wired.network" <<'EOF'
[Match]
Name=en* eth*

[Network]
DHCP=yes
EOF
in_root systemctl enable --quiet systemd-networkd systemd-resolved
# apt's daily timers would take the dpkg lock in the middle of a provisioning run.
in_root systemctl mask --quiet apt-daily.timer apt-daily-upgrade.timer

# Each VM made from the image gets its own sshd host keys and machine id.
rm -f "$root"/etc/ssh/ssh_host_*
mkdir -p "$root/etc/systemd/system/ssh.service.d"
cat >"$root/etc/systemd/system/ssh.service.d/host-keys.conf" <<'EOF'
[Service]
ExecStartPre=
ExecStartPre=/usr/bin/ssh-keygen -A
ExecStartPre=/usr/sbin/sshd -t
EOF
: >"$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"

# The vagrant user, with the insecure key pair from Debian's vagrant package.
in_root useradd -m -s /bin/bash -G sudo vagrant
echo vagrant:vagrant | in_root chpasswd
echo 'vagrant ALL=(ALL) NOPASSWD: ALL' >"$root/etc/sudoers.d/vagrant"
chmod 0440 "$root/etc/sudoers.d/vagrant"
mkdir -p "$root/tmp/vagrant-deb"
if [ "$distro" = debian ]; then
  in_root sh -c 'cd /tmp/vagrant-deb && apt-get download -qq vagrant 2>/dev/null'
else
  # Ubuntu 24.04 no longer packages Vagrant: the same key from this (Debian) host's archive.
  (cd "$root/tmp/vagrant-deb" && apt-get download -qq vagrant 2>/dev/null) \
    || die "cannot download Debian's vagrant package (for its insecure key) on this host"
fi
dpkg-deb --fsys-tarfile "$root"/tmp/vagrant-deb/vagrant_*.deb \
  | tar -x -C "$root/tmp/vagrant-deb" --wildcards '*/keys/vagrant' '*/keys/vagrant.pub'
install -d -m 0700 -o 1000 -g 1000 "$root/home/vagrant/.ssh"
install -m 0600 -o 1000 -g 1000 "$root"/tmp/vagrant-deb/usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub \
  "$root/home/vagrant/.ssh/authorized_keys"
cp "$root"/tmp/vagrant-deb/usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant "$work/ssh_key"
rm -rf "$root/tmp/vagrant-deb"

# Kiln's venv, as provision.sh makes it, with the dependencies of this
# checkout's pyproject.toml (a later change only means provisioning installs
# the difference).
t0=$SECONDS
python3 -c 'import sys, tomllib
with open(sys.argv[1], "rb") as f:
    p = tomllib.load(f)
print("\n".join(p["project"]["dependencies"] + p["build-system"]["requires"] + ["wheel"]))' \
  "$REPO/pyproject.toml" >"$root/tmp/kiln-deps.txt"
# With the host's trust store, so that a build behind a TLS-inspecting proxy
# reaches PyPI; the image keeps Debian's own.
cp /etc/ssl/certs/ca-certificates.crt "$root/tmp/host-ca.pem"
in_root /usr/bin/python3 -m venv --system-site-packages /opt/kiln/venv
in_root /opt/kiln/venv/bin/pip install -q --disable-pip-version-check --no-cache-dir \
  --cert /tmp/host-ca.pem -r /tmp/kiln-deps.txt >"$work/pip.log" 2>&1 \
  || { tail -n 20 "$work/pip.log" >&2; die "pip install failed in the image"; }
rm -f "$root/tmp/kiln-deps.txt" "$root/tmp/host-ca.pem"
say "Kiln's venv made in $((SECONDS - t0)) s"

in_root apt-get clean
rm -rf "$root"/var/lib/apt/lists/* "$root/usr/sbin/policy-rc.d"
ln -sfn ../run/systemd/resolve/stub-resolv.conf "$root/etc/resolv.conf"
rm -f "$root/etc/resolv.conf.build"

# -- disk image -----------------------------------------------------------------

# One MBR partition from 1 MiB with GRUB's BIOS boot code in front of it,
# all written into the image file, no loop device or mount: mke2fs fills the
# file system from the tree at the partition's offset, and GRUB's boot sector
# and core image (what grub-install would write) go in with dd. GRUB finds
# its modules and grub.cfg in /boot/grub on the partition.
t0=$SECONDS
uuid=$(cat /proc/sys/kernel/random/uuid)
printf 'UUID=%s\t/\text4\terrors=remount-ro\t0\t1\n' "$uuid" >"$root/etc/fstab"
mkdir -p "$root/boot/grub"
cp -r "$root/usr/lib/grub/i386-pc" "$root/boot/grub/"
in_root grub-mkimage -O i386-pc -o /boot/grub/i386-pc/core.img -p '(hd0,msdos1)/boot/grub' \
  biosdisk part_msdos ext2 search_fs_uuid
# Written here rather than by update-grub, which cannot know the VM's disk
# from a chroot; the vmlinuz and initrd.img links follow kernel upgrades
# (Debian keeps them in /, Ubuntu in /boot).
boot_links=""
[ -e "$root/vmlinuz" ] || boot_links=/boot
[ -e "$root$boot_links/vmlinuz" ] || die "no vmlinuz link in / or /boot of the image"
cat >"$root/boot/grub/grub.cfg" <<EOF
serial --unit=0 --speed=115200
terminal_input console serial
terminal_output console serial
set timeout=0
search --no-floppy --fs-uuid --set=root $uuid
linux $boot_links/vmlinuz root=UUID=$uuid ro console=tty0 console=ttyS0,115200n8
initrd $boot_links/initrd.img
boot
EOF
umount "$root/proc" "$root/sys"

raw=$work/disk.raw
truncate -s "${DISK_GB}G" "$raw"
printf 'label: dos\nstart=2048, type=83, bootable\n' | sfdisk -q "$raw"
mkfs.ext4 -q -L kiln-root -U "$uuid" -d "$root" -E offset=$((2048 * 512)) \
  "$raw" $((DISK_GB * 1024 * 1024 - 1024))k
# Only the boot sector's code (440 bytes): the partition table after it stays.
dd if="$root/usr/lib/grub/i386-pc/boot.img" of="$raw" bs=440 count=1 conv=notrunc status=none
dd if="$root/boot/grub/i386-pc/core.img" of="$raw" bs=512 seek=1 conv=notrunc status=none

mkdir -p "$work/out"
qemu-img convert -O qcow2 "$raw" "$work/out/disk.qcow2"
install -m 0600 "$work/ssh_key" "$work/out/ssh_key"
cp "$work"/*.log "$work/out/"
echo "$key" >"$work/out/ok"
say "disk image done in $((SECONDS - t0)) s"

# Only the newest image of each distribution is kept: each is about 1.5 GiB.
# (Directories without a distribution prefix are from older builders.)
find "$CACHE" -mindepth 1 -maxdepth 1 -type d ! -name "$distro-$key" \
  \( -name "$distro-*" -o ! -name "*-*" \) -exec rm -rf {} +
rm -rf "$image_dir"
mv "$work/out" "$image_dir"
say "image ready: $image_dir"
[ -z "$box" ] || pack_box "$box"
echo "$image_dir"
