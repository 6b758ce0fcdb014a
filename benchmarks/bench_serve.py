"""Load benchmark of `explainrec serve` on loopback: dynamic batching on (max-batch 16) against one-at-a-time
serving (max-batch 1), malformed input, and an overload burst.

    python benchmarks/bench_serve.py                      # zero-shot SmolLM2-135M (embedded), ~5-10 min on 2 cores
    python benchmarks/bench_serve.py --run runs/gavamoe   # a trained run folder instead
    python benchmarks/bench_serve.py --model tiny --rounds 1 --malformed 100 --burst 80   # quick check

For each mode a server is started in a subprocess (uvicorn on 127.0.0.1, a free port, --queue 64) and C clients
(C = 1, 4, 16) each send ``rounds`` requests one after another (greedy, max_new_tokens 32, the same known pairs in
the same order for both modes; bounded in count and, per level, in time). Explanations/s is completed requests over
wall time; latency is per request as the client sees it. Then, against the batching server:

* malformed requests (bad JSON, wrong types, bodies over the limit, invalid ids, out-of-range settings, unknown
  keys, unknown routes): every one must be answered 4xx; a few *unknown* ids are valid requests (cold start) and
  must be answered 200; /healthz must still answer afterwards;
* an overload burst (more requests at once than the queue holds): answered 200 or 429 (with Retry-After), never
  5xx; the server's RSS (/proc/PID/status) is read before, after one burst and after a second one.

Target of issue 20: at 16 concurrent clients, dynamic batching gives at least 3x the explanations/s of
one-at-a-time serving. Machine load (uptime) is printed beside the figures: the machine is shared.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

STATUS_FILE = "/proc/{pid}/status"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def rss_mb(pid: int) -> float:
    for line in Path(STATUS_FILE.format(pid=pid)).read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Server:
    """``explainrec serve`` in a subprocess on a free loopback port; stopped on exit."""

    def __init__(self, args, max_batch: int):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        source = [args.run] if args.run else ["--method", "zero-shot", "--model", args.model]
        cmd = [sys.executable, "-m", "explainrec.cli", "serve", *source, "--data", args.data, "--port",
               str(self.port), "--max-batch", str(max_batch), "--max-wait-ms", str(args.max_wait_ms), "--queue",
               str(args.queue), "--max-new-tokens", "64", "--timeout-s", "300", "--no-access-log"]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        self.log = open(args.log_dir / f"server-batch{max_batch}.log", "w")  # noqa: SIM115 -- the server's lifetime
        self.process = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"server exited with {self.process.returncode}; see {self.log.name}")
            try:
                if httpx.get(self.base + "/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise SystemExit("server did not become ready")

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


# ---------------------------------------------------------------------------------------------------- throughput


async def run_level(base: str, pairs: list[dict], clients: int, rounds: int, max_new_tokens: int,
                    level_seconds: float) -> dict:
    """``clients`` concurrent clients, each sending ``rounds`` requests in turn (no new ones after the time bound)."""
    latencies: list[float] = []
    batch_sizes: list[int] = []
    failures: list[int] = []
    start = time.perf_counter()
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)

    async def client(k: int, http: httpx.AsyncClient) -> None:
        for r in range(rounds):
            if time.perf_counter() - start > level_seconds:
                return
            pair = pairs[(k * rounds + r) % len(pairs)]
            t = time.perf_counter()
            response = await http.post("/v1/explain", json={**pair, "max_new_tokens": max_new_tokens, "seed": 0})
            if response.status_code != 200:
                failures.append(response.status_code)
                continue
            latencies.append(time.perf_counter() - t)
            batch_sizes.append(response.json()["timing"]["batch_size"])

    async with httpx.AsyncClient(base_url=base, timeout=600, limits=limits) as http:
        await asyncio.gather(*(client(k, http) for k in range(clients)))
    wall = time.perf_counter() - start
    latencies.sort()
    return {"clients": clients, "requests": len(latencies), "failures": failures, "wall_s": wall,
            "per_s": len(latencies) / wall if wall else 0.0,
            "p50_ms": 1000 * statistics.median(latencies) if latencies else float("nan"),
            "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else float("nan"),
            "mean_batch": statistics.fmean(batch_sizes) if batch_sizes else float("nan")}


# ---------------------------------------------------------------------------------------------------- malformed


def malformed_requests(n: int, seed: int = 0) -> list[tuple[str, str, str, bytes | None]]:
    """``(category, method, path, body)``: ``n`` requests the server must refuse with a 4xx."""
    rng = random.Random(seed)
    ok = {"user": "u1", "item": "i1", "max_new_tokens": 4}
    makers = {
        "bad JSON": lambda: rng.choice([b'{"user": "u1",', b"not json", b"{'user': 'u1'}", b"\xff\xfe\x00\x01",
                                        b"", b"[1, 2", b'{"user": "u1", "item": "i1"}}']),
        "wrong types": lambda: json.dumps(rng.choice([
            {**ok, "user": 17}, {**ok, "item": None}, {**ok, "max_new_tokens": "32"}, {**ok, "do_sample": "yes"},
            {**ok, "features": "a,b"}, {**ok, "temperature": [1]}, [ok], "text", 42])).encode(),
        "huge body": lambda: json.dumps({**ok, "title": "x" * rng.randint(70_000, 200_000)}).encode(),
        "invalid ids": lambda: json.dumps(rng.choice([
            {**ok, "user": ""}, {**ok, "item": "i" * 500}, {"user": "u1"}, {"item": "i1"}, {}])).encode(),
        "out of range": lambda: json.dumps(rng.choice([
            {**ok, "max_new_tokens": rng.randint(65, 10_000)}, {**ok, "max_new_tokens": 0},
            {**ok, "do_sample": True, "temperature": 0}, {**ok, "top_p": 1.5}, {**ok, "num_beams": 99},
            {**ok, "seed": -5}, {**ok, "repetition_penalty": -1.0}, {**ok, "no_repeat_ngram_size": 1000}])).encode(),
        "unknown keys": lambda: json.dumps({**ok, rng.choice(["colour", "prompt", "batch_size", "model"]): 1}).encode(),
    }
    out = []
    for k in range(n):
        if k % 20 == 19:  # routes: 5% of them
            out.append(("bad route", *rng.choice([("GET", "/v1/explain"), ("POST", "/v1/nothing"),
                                                  ("DELETE", "/v1/model"), ("GET", "/static/../secret")]), None))
            continue
        category = list(makers)[k % len(makers)]
        out.append((category, "POST", rng.choice(["/v1/explain", "/v1/explain/stream", "/v1/explain/batch"])
                    if category != "huge body" else "/v1/explain", makers[category]()))
    return out


async def send_malformed(base: str, requests: list, concurrency: int = 16) -> dict:
    by_category: dict[str, dict[int, int]] = {}
    semaphore = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency + 4)

    async def one(http, category, method, path, body):
        async with semaphore:
            try:
                response = await http.request(method, path, content=body,
                                              headers={"Content-Type": "application/json"})
                code = response.status_code
            except httpx.HTTPError:
                code = -1  # connection closed (counted as a failure)
        counts = by_category.setdefault(category, {})
        counts[code] = counts.get(code, 0) + 1

    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as http:
        await asyncio.gather(*(one(http, *r) for r in requests))
    return by_category


async def unknown_ids(base: str, n: int) -> dict[int, int]:
    counts: dict[int, int] = {}
    async with httpx.AsyncClient(base_url=base, timeout=300) as http:
        answers = await asyncio.gather(*(http.post("/v1/explain", json={"user": f"stranger-{k}", "item": f"nothing-{k}",
                                                                       "max_new_tokens": 4}) for k in range(n)))
    for r in answers:
        counts[r.status_code] = counts.get(r.status_code, 0) + 1
    return counts


# ---------------------------------------------------------------------------------------------------- overload


async def burst(base: str, pairs: list[dict], n: int) -> dict:
    """``n`` requests at once (more than the queue holds): 200s and 429s (each with Retry-After), no 5xx."""
    counts: dict[int, int] = {}
    retry_after_missing = 0
    limits = httpx.Limits(max_connections=n + 4, max_keepalive_connections=n + 4)
    start = time.perf_counter()
    async with httpx.AsyncClient(base_url=base, timeout=600, limits=limits) as http:
        async def one(k):
            try:
                return await http.post("/v1/explain", json={**pairs[k % len(pairs)], "max_new_tokens": 8})
            except httpx.HTTPError:
                return None

        answers = await asyncio.gather(*(one(k) for k in range(n)))
    for r in answers:
        code = r.status_code if r is not None else -1
        counts[code] = counts.get(code, 0) + 1
        if code == 429 and "retry-after" not in r.headers:
            retry_after_missing += 1
    return {"counts": counts, "retry_after_missing": retry_after_missing, "seconds": time.perf_counter() - start}


def wait_idle(base: str, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = httpx.get(base + "/healthz", timeout=10).json()
        if state["waiting"] == 0 and state["generating"] == 0:
            return
        time.sleep(0.5)


# ---------------------------------------------------------------------------------------------------- main


def known_pairs(data: str, n: int) -> list[dict]:
    from explainrec.data import load_dataset

    dataset = load_dataset(data)
    examples = dataset.split_examples("test") or dataset.examples
    return [{"user": p.user, "item": p.item} for p in (dataset.pair_of(e) for e in examples[:n])]


def fmt(value: float, digits: int = 0) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m", help="LLM of the zero-shot server (default: embedded SmolLM2)")
    ap.add_argument("--run", help="serve this run folder instead of zero-shot")
    ap.add_argument("--data", default="synthetic:users=120,items=80", help="--data of the server (prompt text)")
    ap.add_argument("--levels", default="1,4,16", help="concurrent clients, comma-separated")
    ap.add_argument("--rounds", type=int, default=3, help="requests per client at each level (1 client: rounds+1)")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--max-wait-ms", type=float, default=20.0)
    ap.add_argument("--queue", type=int, default=64)
    ap.add_argument("--level-seconds", type=float, default=150.0, help="no new requests after this, per level")
    ap.add_argument("--malformed", type=int, default=1000)
    ap.add_argument("--unknown", type=int, default=16, help="valid requests with unknown ids (cold start)")
    ap.add_argument("--burst", type=int, default=300, help="requests at once in each overload burst")
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the server")
    ap.add_argument("--log-dir", type=Path, default=Path("/tmp/explainrec-bench-serve"))
    args = ap.parse_args()
    args.log_dir.mkdir(parents=True, exist_ok=True)
    levels = [int(c) for c in args.levels.split(",")]
    pairs = known_pairs(args.data, 64)
    began = time.perf_counter()
    print(f"load average at start: {load_average()} ({os.cpu_count()} cores); server threads {args.threads}; "
          f"{'run ' + args.run if args.run else 'zero-shot ' + args.model}; data {args.data}; "
          f"greedy, max_new_tokens {args.max_new_tokens}", flush=True)

    results: dict[str, list[dict]] = {}
    extra: dict = {}
    for label, max_batch in (("batching (max-batch 16)", 16), ("one at a time (max-batch 1)", 1)):
        server = Server(args, max_batch)
        try:
            server.wait_ready()
            httpx.post(server.base + "/v1/explain", json={**pairs[0], "max_new_tokens": 4}, timeout=300)  # warm-up
            rows = []
            for clients in levels:
                rounds = args.rounds + 1 if clients == 1 else args.rounds
                row = asyncio.run(run_level(server.base, pairs, clients, rounds, args.max_new_tokens,
                                            args.level_seconds))
                row["load"] = load_average()
                rows.append(row)
                print(f"  {label:<28} {clients:>2} clients: {row['requests']} explanations in {row['wall_s']:.1f} s "
                      f"= {row['per_s']:.2f}/s, p50 {fmt(row['p50_ms'])} ms, p99 {fmt(row['p99_ms'])} ms, "
                      f"mean batch {fmt(row['mean_batch'], 1)}  (load {row['load']})", flush=True)
            results[label] = rows
            if max_batch == 16:
                extra = robustness(server, args, pairs)
        finally:
            server.stop()

    print_report(args, levels, results, extra, time.perf_counter() - began)
    return 0


def robustness(server: Server, args, pairs: list[dict]) -> dict:
    """Malformed requests, unknown ids, two overload bursts, RSS before and after (on the batching server)."""
    out: dict = {"rss_mb": {"before": rss_mb(server.process.pid)}}
    start = time.perf_counter()
    out["malformed"] = asyncio.run(send_malformed(server.base, malformed_requests(args.malformed)))
    out["malformed_s"] = time.perf_counter() - start
    out["unknown"] = asyncio.run(unknown_ids(server.base, args.unknown))
    out["healthy_after_malformed"] = server.alive() and httpx.get(server.base + "/healthz").status_code == 200
    out["rss_mb"]["after malformed"] = rss_mb(server.process.pid)
    for k in (1, 2):
        out[f"burst{k}"] = asyncio.run(burst(server.base, pairs, args.burst))
        wait_idle(server.base)
        out["rss_mb"][f"after burst {k}"] = rss_mb(server.process.pid)
    out["healthy_after_bursts"] = server.alive() and httpx.get(server.base + "/healthz").status_code == 200
    return out


def print_report(args, levels, results, extra, seconds) -> None:
    print("\n| mode | clients | explanations | expl/s | p50 ms | p99 ms | mean batch | load avg |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for label, rows in results.items():
        for r in rows:
            failed = f" ({len(r['failures'])} failed)" if r["failures"] else ""
            print(f"| {label} | {r['clients']} | {r['requests']}{failed} | {r['per_s']:.2f} | {fmt(r['p50_ms'])} | "
                  f"{fmt(r['p99_ms'])} | {fmt(r['mean_batch'], 1)} | {r['load']} |")
    on, off = results.get("batching (max-batch 16)"), results.get("one at a time (max-batch 1)")
    if on and off:
        for a, b in zip(on, off):
            ratio = a["per_s"] / b["per_s"] if b["per_s"] else float("nan")
            verdict = ("  target >= 3x: " + ("met" if ratio >= 3 else "NOT met")) if a["clients"] == 16 else ""
            print(f"batching / one-at-a-time at {a['clients']:>2} clients: {ratio:.2f}x{verdict}")
    if extra:
        total = sum(sum(c.values()) for c in extra["malformed"].values())
        four = sum(n for c in extra["malformed"].values() for code, n in c.items() if 400 <= code < 500)
        print(f"\nmalformed: {total} sent in {extra['malformed_s']:.1f} s, {four} answered 4xx, {total - four} otherwise; "
              f"healthy after: {extra['healthy_after_malformed']}")
        for category, counts in sorted(extra["malformed"].items()):
            print(f"  {category:<14} " + ", ".join(f"{code}: {n}" for code, n in sorted(counts.items())))
        print("unknown ids (valid requests, cold start): " + ", ".join(f"{c}: {n}" for c, n in extra["unknown"].items()))
        for k in (1, 2):
            b = extra[f"burst{k}"]
            print(f"overload burst {k}: {args.burst} at once (queue {args.queue}) -> "
                  + ", ".join(f"{code}: {n}" for code, n in sorted(b["counts"].items()))
                  + f"; 429 without Retry-After: {b['retry_after_missing']}; {b['seconds']:.1f} s")
        print("server RSS MB: " + ", ".join(f"{k} {v:.0f}" for k, v in extra["rss_mb"].items())
              + f"; healthy after bursts: {extra['healthy_after_bursts']}")
    print(f"\nwhole run {seconds:.0f} s; load average at end: {load_average()}")


if __name__ == "__main__":
    sys.exit(main())
