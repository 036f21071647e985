"""``qvl bench``: benchmarks as JSON, each against its baseline measured in the same run."""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

RUNTIME = ("embed-text", "embed-image", "embed-video", "rerank-text", "rerank-image")
SERVICE = ("grpc-concurrent", "grpc-stream", "http-weaviate")
REPLICAS = ("failover",)
POSTGRES = ("pg-ingest", "pg-insert-overhead", "pg-rerank", "pg-search", "pg-documents")
WEAVIATE = ("weaviate-ingest", "weaviate-voyage-ingest")
DOCUMENTS = ("documents",)
SCENARIOS = RUNTIME + SERVICE + REPLICAS + POSTGRES + WEAVIATE + DOCUMENTS

# Targets from the issues (CPU/tiny unless noted); reported, never asserted in tests.
TARGETS: dict[str, tuple[str, str, float]] = {
    "rerank-text": ("speedup", ">=", 4.0),
    "grpc-concurrent": ("speedup", ">=", 4.0),
    "grpc-stream": ("ratio", ">=", 0.8),
    "http-weaviate": ("speedup", ">=", 3.0),
    "failover": ("items_lost", "<=", 0.0),
    "pg-ingest": ("ratio", ">=", 0.7),
    "pg-insert-overhead": ("ratio", ">=", 0.8),
    "pg-rerank": ("overhead_ms", "<=", 5.0),
    "pg-search": ("recall_min", ">=", 0.95),
    "pg-documents": ("ratio", ">=", 0.9),
    "weaviate-ingest": ("ratio", ">=", 0.7),
    "weaviate-voyage-ingest": ("ratio", ">=", 0.7),
}


def add_bench_parser(sub: Any, func: Callable[[argparse.Namespace], int]) -> None:
    p = sub.add_parser("bench", help="run a benchmark and write its JSON",
                       description="Each scenario measures qvl and its baseline on the same inputs in one run "
                       "and reports the ratio. Scenarios: " + ", ".join(SCENARIOS))
    p.add_argument("--scenario", required=True, choices=SCENARIOS)
    p.add_argument("--shape", choices=["tiny", "2b"], default="tiny",
                   help="tiny checkpoint, or random weights at the Qwen3-VL-2B shape")
    p.add_argument("--device", help="cpu | cuda (default: cuda when available)")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--model", help="a checkpoint instead of the built tiny model")
    p.add_argument("--items", type=int, help="workload size (default depends on scenario and device)")
    p.add_argument("--batch-tokens", type=int, help="token budget of one model batch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--settings", help="YAML settings file")
    p.add_argument("--output", "-o", help="write the JSON here as well as to standard output")
    p.set_defaults(func=func)


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        try:
            return subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                                  capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            import torch
            return torch.cuda.get_device_name(0)
    return platform.processor() or platform.machine()


def _peak_memory(device: str) -> int:
    if device.startswith("cuda"):
        import torch
        return int(torch.cuda.max_memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _runner(scenario: str) -> Callable[[argparse.Namespace], dict[str, Any]]:
    if scenario in RUNTIME:
        from qvl_devtools.bench.runtime_scenarios import run_runtime_scenario
        return run_runtime_scenario
    if scenario in SERVICE:
        from qvl_devtools.bench.service_scenarios import run_service_scenario
        return run_service_scenario
    if scenario in REPLICAS:
        from qvl_devtools.bench.failover_scenarios import run_failover_scenario
        return run_failover_scenario
    if scenario in DOCUMENTS:
        from qvl_devtools.bench.document_scenarios import run_document_scenario
        return run_document_scenario
    if scenario in POSTGRES:
        from qvl_devtools.bench.postgres_scenarios import run_postgres_scenario
        return run_postgres_scenario
    from qvl_devtools.bench.weaviate_scenarios import run_voyage_scenario, run_weaviate_scenario
    return run_voyage_scenario if scenario == "weaviate-voyage-ingest" else run_weaviate_scenario


def run_bench(args: argparse.Namespace) -> int:
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.device = device
    started = time.time()
    result: dict[str, Any] = {"scenario": args.scenario, "shape": args.shape, "device": device}
    result.update(_runner(args.scenario)(args))
    result["peak_memory_bytes"] = result.get("peak_memory_bytes") or _peak_memory(device)
    result["device_name"] = _device_name(device)
    result["cpu_count"] = __import__("os").cpu_count()
    result["wall_seconds"] = round(time.time() - started, 2)
    if args.scenario in TARGETS:
        key, op, value = TARGETS[args.scenario]
        got = result.get(key)
        result["target"] = f"{key} {op} {value}"
        result["target_met"] = got is not None and (got >= value if op == ">=" else got <= value)
    text = json.dumps(result, indent=2, sort_keys=True)
    print(text)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
    print(f"{args.scenario}: " + ", ".join(f"{k}={result[k]:.3g}" for k in ("speedup", "ratio", "overhead_ms")
                                            if isinstance(result.get(k), float)), file=sys.stderr)
    return 0
