#!/bin/sh
# Vendor d3 and d3-flame-graph into web/static/vendor/ at pinned versions.
#
# The page loads only these local copies (no CDN), with each package's
# LICENSE beside its files. Tarballs come from the npm registry through
# `npm pack` and must match the pinned sha512 before anything is copied.
# manifest.json records the versions and the CSP hash of the <style> that
# d3-flame-graph injects when it loads (web/app.py allows exactly that one).
# Idempotent: does nothing when the manifest already names these versions.
set -eu

D3_VERSION=7.9.2
D3_SHA512=ZKb/mONPVKzaO5UlcWcwN8bS4ezvQaYu+bsou+XgNABdGC800kwH651ADTbbTxMPHW13UlvbQafdmJQDk1w7Mg==
FLAME_VERSION=5.0.0
FLAME_SHA512=ALZQ4at8Dex8HCoj9D5p5TY6gLNEc2vAZAy+NKO/6GLEfhYJmGxYuRClO6RPoplndyOHxQTPipdlGeMggkjtnQ==

here=$(cd "$(dirname "$0")" && pwd)
dest="$here/static/vendor"
manifest="$dest/manifest.json"

if [ -f "$manifest" ] && [ "${1:-}" != "--force" ] &&
    grep -q "\"d3\": \"$D3_VERSION\"" "$manifest" &&
    grep -q "\"d3-flame-graph\": \"$FLAME_VERSION\"" "$manifest"; then
    exit 0
fi
command -v npm >/dev/null || { echo "vendor.sh: npm is missing (apt-get install npm)" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM
cd "$tmp"
echo "vendor: d3@$D3_VERSION d3-flame-graph@$FLAME_VERSION" >&2
npm pack --silent "d3@$D3_VERSION" "d3-flame-graph@$FLAME_VERSION" >/dev/null

check() { # file expected-base64-sha512
    got=$(node -e 'const c=require("crypto"),f=require("fs");
        process.stdout.write(c.createHash("sha512").update(f.readFileSync(process.argv[1])).digest("base64"))' "$1")
    [ "$got" = "$2" ] || { echo "vendor.sh: $1 has sha512 $got, expected $2" >&2; exit 1; }
}
check "d3-$D3_VERSION.tgz" "$D3_SHA512"
check "d3-flame-graph-$FLAME_VERSION.tgz" "$FLAME_SHA512"

mkdir d3 flame
tar xzf "d3-$D3_VERSION.tgz" -C d3
tar xzf "d3-flame-graph-$FLAME_VERSION.tgz" -C flame

rm -rf "$dest"
mkdir -p "$dest/d3" "$dest/d3-flame-graph"
cp d3/package/dist/d3.min.js d3/package/LICENSE "$dest/d3/"
cp flame/package/dist/d3-flamegraph.umd.min.js flame/package/dist/d3-flamegraph.css \
    flame/package/LICENSE "$dest/d3-flame-graph/"

# Load the bundle against a stub document to learn the exact text of the
# <style> element it appends, and hash it the way CSP does.
style_hash=$(node -e '
    const fs = require("fs"), vm = require("vm"), crypto = require("crypto");
    const styles = [];
    const document = {
        createElement: () => ({ textContent: "" }),
        head: { appendChild: (el) => styles.push(el.textContent) },
    };
    const sandbox = { document, d3: {} };
    sandbox.self = sandbox;
    sandbox.globalThis = sandbox;
    vm.runInNewContext(fs.readFileSync(process.argv[1], "utf8"), sandbox);
    if (styles.length !== 1) { console.error("expected one injected style, got " + styles.length); process.exit(1); }
    process.stdout.write("sha256-" + crypto.createHash("sha256").update(styles[0]).digest("base64"));
' "$dest/d3-flame-graph/d3-flamegraph.umd.min.js")

cat >"$manifest" <<JSON
{
  "d3": "$D3_VERSION",
  "d3-flame-graph": "$FLAME_VERSION",
  "style_hashes": ["$style_hash"]
}
JSON
echo "vendor: wrote $dest" >&2
