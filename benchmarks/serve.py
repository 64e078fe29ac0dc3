"""Load test of ``tbps serve``: throughput and latency of ``POST /search`` at 1, 8 and 32 concurrent clients.

    python -m benchmarks.serve --bundle B --gallery G [--quick] [--out DIR] [--clients 1,8,32] [--requests N]

Starts ``tbps serve`` in a subprocess on 127.0.0.1 (a free port, a generated API key), waits for
``/readyz``, then at each client count runs that many concurrent clients (asyncio + httpx, one
keep-alive connection each) over a fixed count of ``/search`` requests, every request a different
caption, and stops the server. Reports requests/s, p50/p99 latency, errors, and from the server's
``/metrics`` the mean queries per text-tower call (what dynamic batching achieved) and where the
server's time went (text tower, ranking). Goal (issue 16): no errors, and at the most clients a
throughput at least 2x that of one client. The clients run on the same machine as the server: they
take CPU from it, so the figures are a floor.

Without ``--quick`` a second server with ``--batch-window-ms 0`` is also measured at one client: what
the batching window costs a lone client.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import fmt, machine, machine_line, markdown_table, write_results

GOAL_RATIO = 2.0
_URL_LINE = re.compile(r"at (http://127\.0\.0\.1:\d+)")
_COLOURS = ("red", "blue", "green", "black", "white", "yellow", "grey", "brown", "pink", "purple", "orange", "navy")
_TOPS = ("coat", "jacket", "t-shirt", "shirt", "sweater", "hoodie", "dress", "vest")
_BOTTOMS = ("trousers", "jeans", "shorts", "skirt", "pants")
_EXTRAS = ("carrying a bag", "with a backpack", "wearing a hat", "with long hair", "with short hair", "in sneakers")


def captions(count: int, offset: int = 0) -> list[str]:
    """``count`` different captions (the ``offset``-th on): colours x garments x details."""
    combos = itertools.islice(itertools.product(_EXTRAS, _BOTTOMS, _TOPS, _COLOURS, _COLOURS), offset, offset + count)
    return [f"a person in a {top_colour} {top} and {bottom_colour} {bottom}, {extra}"
            for extra, bottom, top, top_colour, bottom_colour in combos]


class Server:
    """``tbps serve`` in a subprocess on 127.0.0.1, a free port and a generated key; stopped on exit."""

    def __init__(self, bundle: str, gallery: str, work: Path, extra: list[str]):
        self.key = secrets.token_urlsafe(32)
        key_file = work / f"key-{os.getpid()}-{time.monotonic_ns()}.txt"
        key_file.write_text(self.key + "\n")
        key_file.chmod(0o600)
        self.log = work / f"serve-{time.monotonic_ns()}.log"
        self.command = [sys.executable, "-m", "tbps_runtime.cli.serve", "--gallery", gallery, "--bundle", bundle,
                        "--host", "127.0.0.1", "--port", "0", "--api-key-file", str(key_file), *extra]
        self.process: subprocess.Popen | None = None
        self.url = ""

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def __enter__(self) -> Server:
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT,
                                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.url = self._wait_for_url(timeout=120)
        self._wait_ready(timeout=120)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # uvicorn's graceful stop
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def _wait_for_url(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = _URL_LINE.search(self.log.read_text(errors="replace"))
            if match:
                return match.group(1)
            if self.process.poll() is not None:
                raise RuntimeError(f"tbps serve exited with {self.process.returncode}: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)
        raise TimeoutError(f"tbps serve did not say its URL in {timeout:.0f} s: {self.log.read_text()[-2000:]}")

    def _wait_ready(self, timeout: float) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"tbps serve was not ready in {timeout:.0f} s")

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the server process has used so far."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime

    def metrics(self) -> dict[str, float]:
        """The sums and counts of the server's histograms, and its request count."""
        import httpx

        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        values = {}
        for name, pattern in (("batch_sum", r"^tbps_batch_queries_sum (\S+)"),
                              ("batch_count", r"^tbps_batch_queries_count (\S+)"),
                              ("tower_sum", r'^tbps_tower_seconds_sum\{tower="text"\} (\S+)'),
                              ("rank_sum", r"^tbps_rank_seconds_sum (\S+)"),
                              ("rank_count", r"^tbps_rank_seconds_count (\S+)"),
                              ("search_sum", r'^tbps_request_seconds_sum\{endpoint="/search"\} (\S+)'),
                              ("search_count", r'^tbps_request_seconds_count\{endpoint="/search"\} (\S+)')):
            match = re.search(pattern, text, flags=re.M)
            values[name] = float(match.group(1)) if match else 0.0
        return values


async def _clients(url: str, headers: dict[str, str], clients: int, texts: list[str], k: int
                   ) -> tuple[list[float], int, float]:
    """``clients`` concurrent clients over ``texts`` (one request each): (latencies ms, errors, seconds)."""
    import httpx

    pending = list(reversed(texts))
    latencies: list[float] = []
    errors = 0

    async def client(session: httpx.AsyncClient) -> None:
        nonlocal errors
        while pending:
            text = pending.pop()
            started = time.perf_counter()
            try:
                response = await session.post("/search", json={"query": text, "k": k})
                ok = response.status_code == 200 and len(response.json()["results"]) == 1
            except httpx.HTTPError:
                ok = False
            latencies.append((time.perf_counter() - started) * 1e3)
            errors += not ok

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60, limits=limits) as session:
        started = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(clients)))
        seconds = time.perf_counter() - started
    return latencies, errors, seconds


def run_level(server: Server, clients: int, requests: int, offset: int, k: int) -> dict[str, Any]:
    warm = captions(min(clients, 8), offset=offset)
    asyncio.run(_clients(server.url, server.headers, clients, warm, k))  # connections opened, not counted
    before, server_cpu, client_cpu = server.metrics(), server.cpu_seconds(), time.process_time()
    texts = captions(requests, offset=offset + len(warm))
    latencies, errors, seconds = asyncio.run(_clients(server.url, server.headers, clients, texts, k))
    server_cpu, client_cpu = server.cpu_seconds() - server_cpu, time.process_time() - client_cpu
    after = server.metrics()
    delta = {name: after[name] - before[name] for name in after}
    calls = delta["batch_count"]
    return {"clients": clients, "requests": requests, "errors": errors, "seconds": seconds,
            "throughput_rps": requests / seconds, "p50_ms": float(np.percentile(latencies, 50)),
            "p99_ms": float(np.percentile(latencies, 99)),
            "mean_batch_queries": delta["batch_sum"] / calls if calls else None,
            "text_tower_calls": int(calls),
            "text_tower_ms_per_call": 1e3 * delta["tower_sum"] / calls if calls else None,
            "rank_ms_per_call": 1e3 * delta["rank_sum"] / delta["rank_count"] if delta["rank_count"] else None,
            "server_ms_per_request": (1e3 * delta["search_sum"] / delta["search_count"]
                                      if delta["search_count"] else None),
            "text_tower_share": delta["tower_sum"] / seconds, "rank_share": delta["rank_sum"] / seconds,
            "server_cpu_ms_per_request": 1e3 * server_cpu / requests,
            "client_cpu_ms_per_request": 1e3 * client_cpu / requests,
            "cpu_cores_busy": (server_cpu + client_cpu) / seconds}


def _serve_libraries() -> dict[str, str | None]:
    from importlib import metadata

    versions = {}
    for name in ("fastapi", "starlette", "uvicorn", "pydantic", "httpx"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def to_markdown(results: dict[str, Any], info: dict[str, Any]) -> str:
    lines = [f"### Search service load on {info['cpu']}, {info['cores']} cores: `{results['command']}`", ""]
    rows = results["levels"] + ([results["no_window"]] if results.get("no_window") else [])
    lines.append(markdown_table(
        ["clients", "requests", "errors", "requests/s", "p50 ms", "p99 ms", "queries per text-tower call",
         "text tower ms/call", "ranking ms/call", "server CPU ms/request", "client CPU ms/request", "cores busy"],
        [[f"{r['clients']}" + (" (window 0 ms)" if r is results.get("no_window") else ""), r["requests"], r["errors"],
          fmt(r["throughput_rps"], 1), fmt(r["p50_ms"], 1), fmt(r["p99_ms"], 1), fmt(r["mean_batch_queries"], 1),
          fmt(r["text_tower_ms_per_call"], 1), fmt(r["rank_ms_per_call"], 2), fmt(r["server_cpu_ms_per_request"], 1),
          fmt(r["client_cpu_ms_per_request"], 1), fmt(r["cpu_cores_busy"], 2)] for r in rows]))
    ratio = results["ratio"]
    lines += ["", f"Throughput at {results['ratio_clients'][1]} clients ÷ at {results['ratio_clients'][0]}: "
                  f"**{fmt(ratio, 2)}×** (goal ≥ {GOAL_RATIO:g}×: {'met' if ratio >= GOAL_RATIO else 'missed'}); "
                  f"errors: {sum(r['errors'] for r in results['levels'])}."
                  + (f" Against one client served without a window (`--batch-window-ms 0`, its best latency): "
                     f"**{fmt(results['ratio_no_window'], 2)}×**." if results.get("no_window") else ""), "",
              f"Gallery: {results['rows']} rows; k = {results['k']}; every request a different caption; server "
              f"`--batch-window-ms {results['batch_window_ms']:g} --max-batch {results['max_batch']}`, one worker. "
              "Tower and ranking times are the server's (its /metrics), wall time inside the calls; CPU per "
              "request: the server process's and the load generator's (asyncio + httpx, on the same cores); "
              "cores busy: both together over the wall time.",
              "", f"Machine: {machine_line(info)}; "
              + ", ".join(f"{name} {version}" for name, version in results["serve_libraries"].items() if version) + "."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--gallery", required=True)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--clients", default=None, help="comma list [default: 1,8,32; --quick: 1,4]")
    parser.add_argument("--requests", type=int, default=None, help="requests per client count [default: 384; "
                                                                    "--quick: 16]")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--batch-window-ms", type=float, default=5.0)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="the server's --threads [default: its policy]")
    args = parser.parse_args(argv)
    clients = [int(v) for v in (args.clients or ("1,4" if args.quick else "1,8,32")).split(",")]
    requests = args.requests or (16 if args.quick else 384)
    extra = ["--batch-window-ms", str(args.batch_window_ms), "--max-batch", str(args.max_batch)]
    extra += ["--threads", str(args.threads)] if args.threads else []
    info = machine()
    work = Path(tempfile.mkdtemp(prefix="tbps-serve-bench-"))
    try:
        with Server(args.bundle, args.gallery, work, extra) as server:
            import httpx

            rows = httpx.get(f"{server.url}/readyz", headers=server.headers, timeout=10).json()["rows"]
            levels = [run_level(server, count, requests, offset=i * (requests + 8), k=args.k)
                      for i, count in enumerate(clients)]
        no_window = None
        if not args.quick:
            zero = [*extra[:1], "0", *extra[2:]]
            with Server(args.bundle, args.gallery, work, zero) as server:
                no_window = run_level(server, 1, requests, offset=len(clients) * (requests + 8), k=args.k)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    low, high = min(clients), max(clients)
    by_clients = {level["clients"]: level for level in levels}
    results = {"benchmark": "serve", "command": "python -m benchmarks.serve " + " ".join(argv or []),
               "machine": info, "rows": rows, "k": args.k, "batch_window_ms": args.batch_window_ms,
               "max_batch": args.max_batch, "levels": levels, "no_window": no_window,
               "ratio_clients": [low, high],
               "ratio": by_clients[high]["throughput_rps"] / by_clients[low]["throughput_rps"],
               "goal_ratio": GOAL_RATIO, "serve_libraries": _serve_libraries()}
    results["ratio_no_window"] = (by_clients[high]["throughput_rps"] / no_window["throughput_rps"]
                                  if no_window else None)
    results["goal_met"] = results["ratio"] >= GOAL_RATIO and not any(level["errors"] for level in levels)
    write_results(args.out, "serve", results, to_markdown(results, info))
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
    sys.exit(0)
