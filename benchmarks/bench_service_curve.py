"""What CURVE encryption costs a round trip to the generation service: the same questions to two services in this
process, one in clear and one encrypted, through RemoteModel (what a viewer kernel runs):

- connect: a new client's first status question (TCP connection, ZeroMQ handshake, and for CURVE its key exchange);
- status: a status question on an open connection (a few hundred bytes each way);
- trace: the first trace, a trace of SmolLM2's shapes as big as the real one (about 5 MB), sent and read back.

    .venv/bin/python benchmarks/bench_service_curve.py [REPEATS]

The two services are measured interleaved REPEATS times (default 5); each line gives the medians, the ratio
CURVE / clear and the difference in milliseconds. No model is loaded: the service's answers are what is measured.
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
from functools import partial
from pathlib import Path

from explorer.service import RemoteModel
from explorer.service.keys import KeyPair
from explorer.service.server import GenerationService

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from synthetic import smollm2_shaped_trace, with_analysis
from voila_harness import free_port

N_TOKENS = 110  # prompt and generated tokens: the trace is then about the size of the dashboard's real first trace


class ServiceWithTrace(GenerationService):
    """A service whose 'model' is ready at once and whose first trace is given: no torch."""

    def __init__(self, address: str, trace_bytes: bytes, secret_key: str | None):
        super().__init__(address, secret_key=secret_key)
        self._trace_bytes = trace_bytes

    def _read_first_trace(self) -> None:
        self.first_trace = self._trace_bytes

    def _load(self) -> None:
        self.status.state = "ready"

    def _work(self) -> None:
        self._load()


def median_ms(call, n: int) -> float:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def first_status(address: str, server_key: str | None) -> None:
    remote = RemoteModel(address, server_key=server_key)
    remote.status(timeout=10)
    remote.close()


def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    trace_bytes = with_analysis(smollm2_shaped_trace(N_TOKENS), n_generated=20).to_bytes()
    pair = KeyPair.new()
    services = {}
    for name, secret in (("clear", None), ("CURVE", pair.secret)):
        address = f"tcp://127.0.0.1:{free_port()}"
        service = ServiceWithTrace(address, trace_bytes, secret)
        threading.Thread(target=service.run, daemon=True).start()
        services[name] = (address, pair.public if secret else None, service)
    clients = {name: RemoteModel(address, server_key=key) for name, (address, key, _) in services.items()}
    for remote in clients.values():  # connected, and the first trace read once
        remote.status(timeout=10)
        assert remote.first_trace(timeout=10) is not None
    results = {name: {"connect": [], "status": [], "trace": []} for name in services}
    for _ in range(repeats):
        for name, (address, key, _) in services.items():
            remote = clients[name]
            results[name]["connect"].append(median_ms(partial(first_status, address, key), 20))
            results[name]["status"].append(median_ms(partial(remote.status, timeout=10), 200))
            results[name]["trace"].append(median_ms(partial(remote.first_trace, timeout=30), 10))
    print(f"one round trip to the generation service, clear vs CURVE (median of {repeats} interleaved rounds; "
          f"trace {len(trace_bytes) / 1e6:.1f} MB)")
    print(f"{'':<9}{'clear ms':>10}{'CURVE ms':>10}{'ratio':>8}{'+ms':>8}   CURVE range ms")
    for kind in ("connect", "status", "trace"):
        clear = statistics.median(results["clear"][kind])
        curve = statistics.median(results["CURVE"][kind])
        low, high = min(results["CURVE"][kind]), max(results["CURVE"][kind])
        print(f"{kind:<9}{clear:>10.3f}{curve:>10.3f}{curve / clear:>7.2f}x{curve - clear:>8.3f}   "
              f"{low:.3f}-{high:.3f}")
    for remote in clients.values():
        remote.close()
    for _, _, service in services.values():
        service.stop()


if __name__ == "__main__":
    main()
