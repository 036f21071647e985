"""Generated gRPC stubs of ``proto/qvl/v1/vectorizer.proto`` (``scripts/gen_proto.sh``); nothing of ours."""
