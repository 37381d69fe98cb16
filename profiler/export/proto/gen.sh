#!/bin/sh
# Regenerate the Python modules for the .proto files in this directory:
# *_pb2.py and *_pb2.pyi for each, plus the gRPC stubs of Parca's service.
# Run from anywhere; uses the repo venv unless PYTHON is set. With an
# argument, writes under that directory instead (the test that checks the
# committed files are fresh uses this). Run it after every .proto change.
#
# Paths are given from the repo root so the generated modules import each
# other as `profiler.export.proto.X` and register under names no other
# library uses.
set -eu
cd "$(dirname "$0")/../../.."
PYTHON="${PYTHON:-.venv/bin/python}"
OUT="${1:-.}"
DIR=profiler/export/proto
mkdir -p "$OUT"
"$PYTHON" -m grpc_tools.protoc -I . --python_out="$OUT" --pyi_out="$OUT" \
    $DIR/pyroscope_push.proto $DIR/parca_profilestore.proto $DIR/rpc_status.proto
"$PYTHON" -m grpc_tools.protoc -I . --grpc_python_out="$OUT" $DIR/parca_profilestore.proto
# mypy strict checks profiler/: the gRPC plugin writes untyped code, and
# protoc's .pyi files leave `Mapping` unparameterized; each file says so
# itself rather than the project config carrying generated-code exceptions.
prepend() {
    { echo "$1"; cat "$2"; } > "$2.tmp"
    mv "$2.tmp" "$2"
}
prepend "# mypy: ignore-errors" "$OUT/$DIR/parca_profilestore_pb2_grpc.py"
for f in "$OUT/$DIR"/*_pb2.pyi; do
    prepend '# mypy: disable-error-code="type-arg"' "$f"
done
