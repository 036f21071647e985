"""Two real `qvl serve` replicas behind one client target: round_robin spreads the calls over
both (each replica's /metrics counts them); when one is SIGKILLed mid-run every call and every
stream item still comes back, once, with the right vector; a replica that is starting (health
NOT_SERVING) gets no calls until it is warm, and one that drains on SIGTERM loses none."""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from connectors.client import SERVICE_NAME, Client, ItemFailure
from tests.support.service import DRAIN_NOTICE, ServiceProcess, started_together

pytestmark = [pytest.mark.service, pytest.mark.slow, pytest.mark.lifecycle]


def grpc_calls(svc: ServiceProcess, code: str | None = "OK") -> dict[str, float]:
    """The replica's own count of gRPC calls answered with ``code`` (None: any), by method."""
    out: dict[str, float] = {}
    for line in httpx.get(f"{svc.http_url}/metrics", timeout=10).text.splitlines():
        if line.startswith("qvl_requests_total{") and '"grpc.' in line and (code is None or f'code="{code}"' in line):
            endpoint = line.split('endpoint="', 1)[1].split('"', 1)[0]
            out[endpoint] = out.get(endpoint, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def health(svc: ServiceProcess) -> str:
    """What the replica's grpc.health.v1 says of qvl.v1.Vectorizer (or that it does not answer)."""
    with grpc.insecure_channel(svc.grpc_target) as channel:
        try:
            got = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME),
                                                            timeout=2)
        except grpc.RpcError as err:
            return err.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(got.status)


def cosine(x: np.ndarray, y: np.ndarray) -> float:
    return float(x @ y / np.linalg.norm(x) / np.linalg.norm(y))


def test_round_robin_health_checks_and_a_killed_replica_loses_nothing() -> None:
    # b drains on SIGTERM below: both keep the product's drain notice.
    with started_together(ServiceProcess(env=DRAIN_NOTICE), ServiceProcess(env=DRAIN_NOTICE)) as (a, b):
        target = f"ipv4:{a.grpc_target},{b.grpc_target}"

        # 1. Spread: 40 one-item calls from one client reach both replicas.
        with Client(target) as c:
            c.wait_ready(60)
            for i in range(40):
                c.embed([f"warm {i}"])
        spread = {"a": grpc_calls(a).get("grpc.Embed", 0), "b": grpc_calls(b).get("grpc.Embed", 0)}
        assert spread["a"] + spread["b"] == 40 and min(spread.values()) >= 10, spread

        # 2. Two streams (consecutive picks: one on each replica) and unary callers on both; then a
        # replica is SIGKILLed while all of them are in flight.
        n = 1500
        texts = [f"caption number {i}" for i in range(n)]
        client = Client(target, retries=8)
        client.wait_ready(60)
        streams: list[list[Any]] = [[], []]
        stamps: list[list[float]] = [[], []]
        errors: list[BaseException] = []
        unary: list[tuple[int, np.ndarray]] = []
        stop_unary = threading.Event()

        def stream(k: int) -> None:
            try:
                for row in client.embed_stream(texts, max_in_flight=64):
                    streams[k].append(row)
                    stamps[k].append(time.monotonic())
            except BaseException as exc:  # reported by the test
                errors.append(exc)

        def calls(k: int) -> None:
            i = k
            try:
                while not stop_unary.is_set():
                    got = client.embed([texts[(i + j) % n] for j in range(4)])
                    unary.append((i, got))
                    i += 4
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=stream, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
            time.sleep(0.2)
        callers = [threading.Thread(target=calls, args=(k,)) for k in range(3)]
        for t in callers:
            t.start()
        deadline = time.monotonic() + 120
        while min(len(s) for s in streams) < n // 5 and time.monotonic() < deadline and not errors:
            time.sleep(0.01)
        before_kill = grpc_calls(a)
        killed_at = time.monotonic()
        a.kill()
        for t in threads:
            t.join(timeout=300)
        stop_unary.set()
        for t in callers:
            t.join(timeout=60)
        assert not errors, errors

        # Every stream item once, in order, none failed; vectors as the survivor computes them.
        with Client(b.grpc_target) as ref_client:
            reference = np.stack(list(ref_client.embed_stream(texts)))
        for rows in streams:
            assert len(rows) == n
            assert not any(isinstance(r, ItemFailure) for r in rows)
            assert min(cosine(r, reference[i]) for i, r in enumerate(rows)) > 0.999
        for i, got in unary:
            for j in range(4):
                assert cosine(got[j], reference[(i + j) % n]) > 0.999
        after_kill = [t for s in stamps for t in s if t > killed_at]
        gaps = [max(np.diff([killed_at, *[t for t in s if t > killed_at]]), default=0.0) for s in stamps]
        survivor = grpc_calls(b)
        print(f"\ncalls per replica: spread a={spread['a']:.0f} b={spread['b']:.0f}; under load a={before_kill} "
              f"(until SIGKILL) b={survivor}; stream items lost 0, repeated 0 of {2 * n}; unary calls "
              f"{len(unary)}; client retries {client.retried}; longest stall after the kill {max(gaps):.2f} s; "
              f"{len(after_kill)} stream results after the kill")
        assert client.retried >= 1  # something was in flight on the killed replica
        assert max(gaps) < 10

        # 3. The killed replica starts again: while it loads it says NOT_SERVING and gets no calls;
        # once warm it gets its share again.
        a.start(wait=False)
        seen: set[str] = set()
        while True:
            state = health(a)
            seen.add(state)
            if state == "SERVING":
                break
            client.embed(["while a starts"])
            time.sleep(0.05)
        assert "NOT_SERVING" in seen, seen  # listeners first, models later: health said so meanwhile
        assert grpc_calls(a, code=None) == {}  # not one call reached it, not even to be refused
        time.sleep(1.0)  # the client's health watch sees it too
        for i in range(40):
            client.embed([f"back {i}"])
        assert grpc_calls(a).get("grpc.Embed", 0) >= 10

        # 4. SIGTERM: b turns NOT_SERVING and drains; calls go on, none fails.
        failures: list[BaseException] = []
        done = threading.Event()
        answered = [0]

        def keep_calling() -> None:
            while not done.is_set():
                try:
                    client.embed(["during the drain"])
                    answered[0] += 1
                except BaseException as exc:  # reported by the test
                    failures.append(exc)

        caller = threading.Thread(target=keep_calling)
        caller.start()
        time.sleep(0.5)
        assert b.proc is not None
        b.proc.send_signal(signal.SIGTERM)
        assert b.proc.wait(timeout=60) == 0
        before = answered[0]
        time.sleep(1.0)
        done.set()
        caller.join(timeout=60)
        assert not failures, failures[:3]
        assert answered[0] > before  # and a went on answering alone
        client.close()
