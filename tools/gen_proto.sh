#!/bin/sh
# Regenerate symbolizer/proto/profile_pb2.py and profile_pb2.pyi from
# symbolizer/proto/profile.proto. Run from anywhere; uses the repo venv
# unless PYTHON is set. tests/unit/test_pprof.py checks the committed output
# matches what this produces, so run it after every change to the .proto.
set -eu
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
exec "$PYTHON" -m grpc_tools.protoc -I symbolizer/proto \
    --python_out=symbolizer/proto --pyi_out=symbolizer/proto profile.proto
