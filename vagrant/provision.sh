#!/usr/bin/env bash
# Installs Kiln as a systemd service on a Debian 12 / Ubuntu 24.04 host:
# BCC and matching kernel headers from apt, Kiln in /opt/kiln (its own venv),
# /etc/kiln/kiln.yaml (written once, then left alone), kiln.service (state in
# /var/lib/kiln). Run it again at any time: it only acts on what differs,
# restarts the service only when something changed, and ends with
# "provision: nothing changed" when nothing did.
#
#   sudo vagrant/provision.sh [--listen HOST:PORT] [SOURCE_DIR]
#   vagrant/provision.sh --list-packages [--distro debian|ubuntu]
#                                             # the apt packages it installs
#
# SOURCE_DIR is the Kiln tree to install (default: the repository holding this
# script). --listen only applies when the config is first written; a
# non-loopback address gets a generated access token in the config, since the
# UI refuses to serve other hosts without one.
set -euo pipefail

say() { echo "provision: $*"; }
die() { echo "provision: error: $*" >&2; exit 1; }

PREFIX=/opt/kiln
VENV=$PREFIX/venv
CONF_DIR=/etc/kiln
CONF=$CONF_DIR/kiln.yaml
STATE_DIR=/var/lib/kiln
UNIT=/etc/systemd/system/kiln.service
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

listen=127.0.0.1:7070
source_dir=$(dirname "$HERE")
list_only=0
distro=""
while [ $# -gt 0 ]; do
  case $1 in
    --listen) [ $# -ge 2 ] || die "--listen needs HOST:PORT"; listen=$2; shift 2 ;;
    --listen=*) listen=${1#--listen=}; shift ;;
    --list-packages) list_only=1; shift ;;
    --distro) [ $# -ge 2 ] || die "--distro needs a name"; distro=$2; shift 2 ;;
    -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) source_dir=$1; shift ;;
  esac
done

# The apt packages, one place for this script and the VM image builder
# (tools/vm/build-image.sh preinstalls exactly this list). Headers are apart:
# their name depends on the running kernel.
packages() {
  echo bpfcc-tools python3-bpfcc libbpfcc python3-venv gcc libc6-dev ca-certificates
  # Debian ships bpftool as its own package; Ubuntu inside linux-tools.
  if [ "${ID:-}" = ubuntu ]; then echo linux-tools-common; else echo bpftool; fi
}

[ -r /etc/os-release ] || die "no /etc/os-release: only Debian and Ubuntu are supported"
# shellcheck source=/dev/null
. /etc/os-release
case " ${ID:-} ${ID_LIKE:-} " in
  *" debian "*|*" ubuntu "*) ;;
  *) die "unsupported distribution '${ID:-?}': Kiln's installer knows Debian and Ubuntu" ;;
esac

if [ "$list_only" -eq 1 ]; then
  # --distro lets the image builder ask for a guest's list from any host.
  ID=${distro:-${ID:-}} packages | tr ' ' '\n'
  exit 0
fi

[ "$(id -u)" -eq 0 ] || die "must run as root (sudo $0)"
if ! grep -qs '^name = "kiln"' "$source_dir/pyproject.toml"; then
  die "$source_dir is not a Kiln source tree (no pyproject.toml naming kiln)"
fi
source_dir=$(cd "$source_dir" && pwd)

changes=()
export DEBIAN_FRONTEND=noninteractive

# -- apt packages and kernel headers ----------------------------------------------

apt_updated=0
apt_install() {
  if [ "$apt_updated" -eq 0 ]; then
    say "apt-get update"
    apt-get update -qq >/dev/null
    apt_updated=1
  fi
  say "installing $*"
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

missing=()
read -r -a wanted <<<"$(packages | tr '\n' ' ')"
for p in "${wanted[@]}"; do installed "$p" || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  apt_install "${missing[@]}"
  changes+=("packages: ${missing[*]}")
fi

release=$(uname -r)
if [ "${ID:-}" = ubuntu ] && ! installed "linux-tools-$release"; then
  # bpftool for this exact kernel; only a debugging aid, so a miss is a warning.
  if apt-cache madison "linux-tools-$release" 2>/dev/null | grep -q .; then
    apt_install "linux-tools-$release" && changes+=("packages: linux-tools-$release")
  else
    say "warning: no linux-tools-$release in apt; bpftool will be missing"
  fi
fi

headers=/lib/modules/$release/build
if [ ! -e "$headers/include" ] && [ ! -e "$headers/Makefile" ]; then
  if [ "$apt_updated" -eq 0 ]; then apt-get update -qq >/dev/null; apt_updated=1; fi
  if apt-cache madison "linux-headers-$release" 2>/dev/null | grep -q .; then
    apt_install "linux-headers-$release"
    changes+=("packages: linux-headers-$release")
  else
    # A kernel the archive no longer carries (or a custom one): link the
    # newest distro headers. Kiln's BPF uses only UAPI types and helpers,
    # which other releases' headers describe the same way.
    if [ "${ID:-}" = ubuntu ]; then meta=linux-headers-generic
    else meta=linux-headers-$(dpkg --print-architecture); fi
    apt_install "$meta"
    newest=$(find /lib/modules -mindepth 2 -maxdepth 2 -name build -xtype d -printf '%h\n' \
      | grep -vx "/lib/modules/$release" | sort -V | tail -n 1)
    [ -n "$newest" ] || die "no kernel headers found after installing $meta"
    mkdir -p "/lib/modules/$release"
    ln -sfn "$(readlink -f "$newest/build")" "$headers"
    [ -e "$newest/source" ] && ln -sfn "$(readlink -f "$newest/source")" "/lib/modules/$release/source"
    say "WARNING: no linux-headers-$release in apt; linked the headers of ${newest##*/} instead" \
        "(Kiln's BPF uses only UAPI types, so this is safe)"
    changes+=("packages: $meta (fallback headers)")
  fi
fi

# systemd mounts these at boot; a host without them (or a container) needs it done here.
grep -q ' /sys/kernel/tracing tracefs ' /proc/mounts || mount -t tracefs nodev /sys/kernel/tracing
grep -q ' /sys/kernel/debug debugfs ' /proc/mounts || mount -t debugfs nodev /sys/kernel/debug

# -- Kiln into /opt/kiln ----------------------------------------------------------

# The files that make up an install: the source tree without VCS data, caches,
# build output and tests, so that a test-only edit does not reinstall.
source_files() {
  (cd "$source_dir" && find . \
    \( -name .git -o -name .venv -o -name .make -o -name __pycache__ -o -name '*.egg-info' \
       -o -name .mypy_cache -o -name .ruff_cache -o -name .pytest_cache -o -name .hypothesis \
       -o -name node_modules -o -name artifacts -o -name '*.pb.gz' \
       -o -path ./build -o -path ./tests \) -prune -o \( -type f -o -type l \) -print0 \
    | LC_ALL=C sort -z)
}
source_hash=$(source_files | (cd "$source_dir" && xargs -0 sha256sum) | sha256sum | cut -c1-64)

venv_ok() { [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import bcc' 2>/dev/null; }

if ! venv_ok || [ "$(cat "$PREFIX/.source-sha256" 2>/dev/null)" != "$source_hash" ] \
   || [ ! -x "$VENV/bin/kiln" ]; then
  say "installing Kiln from $source_dir into $PREFIX"
  mkdir -p "$PREFIX"
  rm -f "$PREFIX/.source-sha256"  # written back only once the install completed
  rm -rf "$PREFIX/src.new"
  mkdir "$PREFIX/src.new"
  source_files | (cd "$source_dir" && tar --null -T - -cf -) | tar -C "$PREFIX/src.new" -xf -
  rm -rf "$PREFIX/src"
  mv "$PREFIX/src.new" "$PREFIX/src"
  if ! venv_ok; then
    # A venv of another Python (after a distribution upgrade) cannot be fixed in place.
    rm -rf "$VENV"
    # BCC's bindings only come from apt, hence the system site-packages.
    /usr/bin/python3 -m venv --system-site-packages "$VENV"
  fi
  pip=("$VENV/bin/pip" --quiet --disable-pip-version-check)
  # The build requirements live in the venv, so that building the wheel
  # needs no throwaway build environment (and no download) on every upgrade.
  mapfile -t build_reqs < <("$VENV/bin/python" -c 'import sys, tomllib
with open(sys.argv[1], "rb") as f:
    print("\n".join(tomllib.load(f)["build-system"]["requires"]))' "$PREFIX/src/pyproject.toml")
  "${pip[@]}" install "${build_reqs[@]}" wheel
  # A wheel first, so that reinstalling the same version really replaces the files.
  wheels=$(mktemp -d)
  "${pip[@]}" wheel --no-deps --no-build-isolation -w "$wheels" "$PREFIX/src"
  "${pip[@]}" install --force-reinstall --no-deps "$wheels"/kiln-*.whl
  "${pip[@]}" install "$wheels"/kiln-*.whl  # the dependencies
  rm -rf "$wheels" "$PREFIX/src/build"
  echo "$source_hash" >"$PREFIX/.source-sha256"
  changes+=("kiln ($source_hash)")
fi

# -- what this host lacks: Kiln's own checks, before anything depends on them -------

say "kiln doctor:"
doctor_rc=0
"$VENV/bin/kiln" doctor | sed 's/^/  /' || doctor_rc=$?
[ "$doctor_rc" -eq 0 ] || die "kiln doctor found something missing (above); fix it and run this again"

# -- config, state, service ----------------------------------------------------------

is_loopback() {
  case ${1%:*} in
    127.*|localhost|'[::1]') return 0 ;;
    *) return 1 ;;
  esac
}

if [ ! -e "$CONF" ]; then
  install -d -m 0755 "$CONF_DIR"
  token_line=""
  if ! is_loopback "$listen"; then
    # 32 random alphanumerics: the UI's bearer token and login password.
    token=$(tr -dc 'A-Za-z0-9' </dev/urandom | head -c 32 || true)
    token_line="token: \"$token\""
  fi
  tmp=$(mktemp "$CONF_DIR/.kiln.yaml.XXXXXX")
  cat >"$tmp" <<EOF
# Kiln daemon settings. Written once by provision.sh, which never changes it
# again; apply edits with: systemctl reload kiln
listen: $listen
${token_line:-# token: set one to listen on a non-loopback address}
data_dir: $STATE_DIR
frequency: 19
window_seconds: 10
retention:
  max_age: 24h
  max_bytes: 2GiB
EOF
  chmod 0600 "$tmp"  # it may hold the token
  mv "$tmp" "$CONF"
  changes+=("config $CONF")
elif [ "$listen" != 127.0.0.1:7070 ] && ! grep -q "^listen: *$listen *\$" "$CONF"; then
  say "note: $CONF exists and is kept; --listen $listen was not applied"
fi

# A config the daemon would refuse must not replace a running service.
if ! "$VENV/bin/kiln" config check "$CONF" >/dev/null; then
  die "$CONF has errors (above); the service was left as it was"
fi

if [ ! -d "$STATE_DIR" ]; then
  install -d -m 0700 "$STATE_DIR"
  changes+=("state dir $STATE_DIR")
fi

if [ ! -d /run/systemd/system ]; then
  say "warning: systemd is not running here; start Kiln by hand:" \
      "$VENV/bin/kiln run --config $CONF"
else
  if ! cmp -s "$source_dir/vagrant/kiln.service" "$UNIT"; then
    install -m 0644 "$source_dir/vagrant/kiln.service" "$UNIT"
    systemctl daemon-reload
    changes+=("unit $UNIT")
  fi
  if ! systemctl is-enabled --quiet kiln.service; then
    systemctl enable --quiet kiln.service
    changes+=("enabled kiln.service")
  fi
  if [ ${#changes[@]} -gt 0 ]; then
    say "restarting kiln.service"
    systemctl restart kiln.service
  elif ! systemctl is-active --quiet kiln.service; then
    say "starting kiln.service"
    systemctl start kiln.service
    changes+=("started kiln.service")
  fi

  # Wait for the UI: BCC compiles the BPF programs at start, which takes a while.
  addr=$(sed -n 's/^listen:[[:space:]]*//p' "$CONF" | tr -d "\"' " | tail -n 1)
  addr=${addr:-127.0.0.1:7070}
  host=${addr%:*} port=${addr##*:}
  case $host in ''|0.0.0.0) host=127.0.0.1 ;; '[::]'|'::') host='[::1]' ;; esac
  url="http://$host:$port/healthz"
  # Generous for emulated VMs; a daemon that dies ends the wait at once.
  deadline=$((SECONDS + 600))
  until /usr/bin/python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=3)' \
        "$url" 2>/dev/null; do
    if [ "$SECONDS" -ge "$deadline" ] || systemctl is-failed --quiet kiln.service \
       || [ "$(systemctl show -p NRestarts --value kiln.service)" != 0 ]; then
      journalctl -u kiln.service -n 40 --no-pager >&2 || true
      die "kiln.service is not answering on $url (journalctl -u kiln shows why)"
    fi
    sleep 1
  done
  say "kiln.service is running; UI at http://$addr/"
  if grep -q '^token:' "$CONF"; then
    say "the UI asks for the token in $CONF (sudo grep token $CONF)"
  fi
fi

if [ ${#changes[@]} -eq 0 ]; then
  say "nothing changed"
else
  for c in "${changes[@]}"; do say "changed: $c"; done
fi
