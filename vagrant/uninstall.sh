#!/usr/bin/env bash
# Removes what vagrant/provision.sh installed: kiln.service and /opt/kiln.
# The config (/etc/kiln) and the recorded profiles (/var/lib/kiln) stay, so
# that a later install picks up where this one stopped, unless --purge.
# The apt packages stay too: other software may use BCC and the headers.
#
#   sudo vagrant/uninstall.sh [--purge]
set -euo pipefail

say() { echo "uninstall: $*"; }

purge=0
case ${1:-} in
  "") ;;
  --purge) purge=1 ;;
  -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
  *) echo "uninstall: unknown argument $1 (see --help)" >&2; exit 2 ;;
esac
[ "$(id -u)" -eq 0 ] || { echo "uninstall: must run as root (sudo $0)" >&2; exit 2; }

unit=/etc/systemd/system/kiln.service
if [ -d /run/systemd/system ] && [ -e "$unit" ]; then
  say "stopping and disabling kiln.service"
  systemctl disable --now --quiet kiln.service || true
  rm -f "$unit"
  rm -rf "$unit.d"
  systemctl daemon-reload
  systemctl reset-failed kiln.service 2>/dev/null || true
else
  rm -f "$unit"
fi

if [ -e /opt/kiln ]; then
  say "removing /opt/kiln"
  rm -rf /opt/kiln
fi

if [ "$purge" -eq 1 ]; then
  say "purging /etc/kiln and /var/lib/kiln"
  rm -rf /etc/kiln /var/lib/kiln
else
  for kept in /etc/kiln /var/lib/kiln; do
    [ ! -e "$kept" ] || say "kept $kept (remove it with --purge)"
  done
fi
