#!/usr/bin/env bash
# Regenerates the committed gRPC stubs in qvl_proto/ from proto/ (tests/unit/test_proto_stubs.py checks they are current).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=${1:-qvl_proto}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"${QVL_PYTHON:-.venv/bin/python}" -m grpc_tools.protoc -I proto --python_out="$tmp" --pyi_out="$tmp" --grpc_python_out="$tmp" \
  proto/qvl/v1/vectorizer.proto
# protoc writes a package per proto package (qvl/v1/); the stubs live flat in one package of their own,
# and its absolute-style import (`from qvl.v1 import ...`) becomes package-relative.
mkdir -p "$out"
cp "$tmp"/qvl/v1/vectorizer_pb2.py "$tmp"/qvl/v1/vectorizer_pb2.pyi "$tmp"/qvl/v1/vectorizer_pb2_grpc.py "$out"/
sed -i 's/^from qvl\.v1 import vectorizer_pb2/from . import vectorizer_pb2/' "$out/vectorizer_pb2_grpc.py"
