#!/usr/bin/env bash
# Regenerates the committed gRPC stubs from proto/ (tests/unit/test_proto_stubs.py checks they are current).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=${1:-vectorizer_service/proto_gen}
mkdir -p "$out"
.venv/bin/python -m grpc_tools.protoc -I proto --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  proto/qvl/v1/vectorizer.proto
# protoc writes absolute-style imports (`from qvl.v1 import ...`); make them package-relative.
sed -i 's/^from qvl\.v1 import vectorizer_pb2/from . import vectorizer_pb2/' "$out/qvl/v1/vectorizer_pb2_grpc.py"
touch "$out/__init__.py" "$out/qvl/__init__.py" "$out/qvl/v1/__init__.py"
