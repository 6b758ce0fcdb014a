"""Load benchmark of `explainrec serve` on loopback: dynamic batching on (max-batch 16) against one-at-a-time
serving (max-batch 1), malformed input, an overload burst, and a drain under load.

    python benchmarks/bench_serve.py                      # zero-shot SmolLM2-135M (embedded), ~5-10 min on 2 cores
    python benchmarks/bench_serve.py --run runs/gavamoe   # a trained run folder instead
    python benchmarks/bench_serve.py --model tiny --rounds 1 --malformed 100 --burst 80   # quick check

Needs only a plain install (``bash scripts/install.sh``: httpx, its client, is one of explainrec's dependencies).

Both servers run at once, each in a subprocess (uvicorn on 127.0.0.1, a free port, --queue 64), and each gets one
warm-up request. At 1 client the two modes take turns request by request (A B B A ...), so neither profits from
the other's warm-up or from a quieter moment of the shared machine; at C clients (C = 4, 16) each level runs on
both servers, in the order A B for one level and B A for the next, C clients each sending ``rounds`` requests one
after another (greedy, max_new_tokens 32, the same known pairs in the same order for both modes; bounded in count
and, per level, in time). Explanations/s is completed requests over the time spent on them; latency is per
request as the client sees it. Then, against the batching server:

* malformed requests (bad JSON, wrong types, bodies over the limit, invalid ids, out-of-range settings, unknown
  keys, unknown routes): every one must be answered 4xx; a few *unknown* ids are valid requests (cold start) and
  must be answered 200; /healthz must still answer afterwards;
* an overload burst (more requests at once than the queue holds): answered 200 or 429 (with Retry-After), never
  5xx; the server's RSS (/proc/PID/status) is read before, after one burst and after a second one;
* a drain: ``--drain`` requests in flight, then SIGTERM: every one answered (200 within the grace period), the
  server's exit code and how long the drain took.

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

STATUS_FILE = "/proc/{pid}/status"


def require_httpx() -> None:
    """httpx is one of explainrec's dependencies; an older install may lack it: say how to get it."""
    global httpx
    try:
        import httpx
    except ImportError:
        raise SystemExit("bench_serve.py needs httpx: pip install 'httpx>=0.27' (bash scripts/install.sh installs it)")


httpx = None  # imported by require_httpx(), after the arguments (so --help works anywhere)


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
                if httpx.get(self.base + "/readyz", timeout=2).status_code == 200:  # 503 while loading
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
                    level_seconds: float, offset: int = 0) -> dict:
    """``clients`` concurrent clients, each sending ``rounds`` requests in turn (no new ones after the time bound);
    client k's r-th request explains pair ``offset + k * rounds + r``."""
    latencies: list[float] = []
    batch_sizes: list[int] = []
    failures: list[int] = []
    start = time.perf_counter()
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)

    async def client(k: int, http) -> None:
        for r in range(rounds):
            if time.perf_counter() - start > level_seconds:
                return
            pair = pairs[(offset + k * rounds + r) % len(pairs)]
            t = time.perf_counter()
            response = await http.post("/v1/explain", json={**pair, "max_new_tokens": max_new_tokens, "seed": 0})
            if response.status_code != 200:
                failures.append(response.status_code)
                continue
            latencies.append(time.perf_counter() - t)
            batch_sizes.append(response.json()["timing"]["batch_size"])

    async with httpx.AsyncClient(base_url=base, timeout=600, limits=limits) as http:
        await asyncio.gather(*(client(k, http) for k in range(clients)))
    return {"clients": clients, "latencies": latencies, "batch_sizes": batch_sizes, "failures": failures,
            "wall_s": time.perf_counter() - start}


def summary(parts: list[dict]) -> dict:
    """One row from one or more runs of a level (their requests together, their times added)."""
    latencies = sorted(x for p in parts for x in p["latencies"])
    batch_sizes = [x for p in parts for x in p["batch_sizes"]]
    wall = sum(p["wall_s"] for p in parts)
    return {"clients": parts[0]["clients"], "requests": len(latencies),
            "failures": [x for p in parts for x in p["failures"]], "wall_s": wall,
            "per_s": len(latencies) / wall if wall else 0.0,
            "p50_ms": 1000 * statistics.median(latencies) if latencies else float("nan"),
            "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else float("nan"),
            "mean_batch": statistics.fmean(batch_sizes) if batch_sizes else float("nan")}


def measure(servers: dict[str, "Server"], pairs: list[dict], clients: int, rounds: int, args, level: int) -> dict:
    """Every mode's row at one level: at 1 client the modes take turns request by request (A B B A ...); at more,
    the whole level runs on each server in turn, A B at even levels and B A at odd ones."""
    labels = list(servers)
    runs: dict[str, list[dict]] = {label: [] for label in labels}

    def run(label: str, n_clients: int, n_rounds: int, offset: int) -> None:
        runs[label].append(asyncio.run(run_level(servers[label].base, pairs, n_clients, n_rounds,
                                                 args.max_new_tokens, args.level_seconds, offset)))

    if clients == 1:
        for r in range(rounds):
            for label in (labels if r % 2 == 0 else labels[::-1]):
                run(label, 1, 1, r)
    else:
        for label in (labels if level % 2 == 0 else labels[::-1]):
            run(label, clients, rounds, 0)
    return {label: summary(parts) for label, parts in runs.items()}


# ---------------------------------------------------------------------------------------------------- malformed


def malformed_requests(n: int, seed: int = 0) -> list[tuple[str, str, str, bytes | None]]:
    """``(category, method, path, body)``: ``n`` requests the server must refuse with a 4xx."""
    rng = random.Random(seed)
    ok = {"user": "u1", "item": "i1", "max_new_tokens": 4}
    makers = {
        "bad JSON": lambda: rng.choice([b'{"user": "u1",', b"not json", b"{'user': 'u1'}", b"\xff\xfe\x00\x01",
                                        b"", b"[1, 2", b'{"user": "u1", "item": "i1"}}']),
        "wrong types": lambda: json.dumps(rng.choice([
            {**ok, "user": 1.5}, {**ok, "item": None}, {**ok, "max_new_tokens": "32"}, {**ok, "do_sample": "yes"},
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


def drain_under_load(server: Server, pairs: list[dict], n: int, max_new_tokens: int) -> dict:
    """``n`` requests in flight, SIGTERM once all are queued or generating: how each was answered, how long the
    server took to exit and with which code (the default grace period, 30 s, covers their generation)."""
    import signal

    async def main() -> dict:
        limits = httpx.Limits(max_connections=n + 4, max_keepalive_connections=n + 4)
        async with httpx.AsyncClient(base_url=server.base, timeout=600, limits=limits) as http:
            async def one(k):
                try:
                    r = await http.post("/v1/explain", json={**pairs[k % len(pairs)], "max_new_tokens": max_new_tokens})
                    return r.status_code
                except httpx.HTTPError:
                    return -1  # a cut connection
            tasks = [asyncio.ensure_future(one(k)) for k in range(n)]
            while True:
                state = (await http.get("/healthz")).json()
                if state["waiting"] + state["generating"] >= n:
                    break
                await asyncio.sleep(0.02)
            start = time.perf_counter()
            server.process.send_signal(signal.SIGTERM)
            codes = await asyncio.gather(*tasks)
            answered = time.perf_counter() - start
        server.process.wait(timeout=120)
        counts: dict[int, int] = {}
        for code in codes:
            counts[code] = counts.get(code, 0) + 1
        return {"counts": counts, "answered_s": answered, "exit_s": time.perf_counter() - start,
                "exit_code": server.process.returncode}

    return asyncio.run(main())


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
    ap.add_argument("--rounds", type=int, default=3, help="requests per client at each level (1 client: 2 x rounds+1)")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--max-wait-ms", type=float, default=20.0)
    ap.add_argument("--queue", type=int, default=64)
    ap.add_argument("--level-seconds", type=float, default=150.0, help="no new requests after this, per level")
    ap.add_argument("--malformed", type=int, default=1000)
    ap.add_argument("--unknown", type=int, default=16, help="valid requests with unknown ids (cold start)")
    ap.add_argument("--burst", type=int, default=300, help="requests at once in each overload burst")
    ap.add_argument("--drain", type=int, default=32, help="requests in flight when the server gets SIGTERM (0: skip)")
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each server")
    ap.add_argument("--log-dir", type=Path, default=Path("/tmp/explainrec-bench-serve"))
    args = ap.parse_args()
    require_httpx()
    args.log_dir.mkdir(parents=True, exist_ok=True)
    levels = [int(c) for c in args.levels.split(",")]
    pairs = known_pairs(args.data, 64)
    began = time.perf_counter()
    print(f"load average at start: {load_average()} ({os.cpu_count()} cores); server threads {args.threads}; "
          f"{'run ' + args.run if args.run else 'zero-shot ' + args.model}; data {args.data}; "
          f"greedy, max_new_tokens {args.max_new_tokens}", flush=True)

    servers = {"batching (max-batch 16)": Server(args, 16), "one at a time (max-batch 1)": Server(args, 1)}
    results: dict[str, list[dict]] = {label: [] for label in servers}
    extra: dict = {}
    try:
        for server in servers.values():
            server.wait_ready()
            httpx.post(server.base + "/v1/explain", json={**pairs[0], "max_new_tokens": 4}, timeout=300)  # warm-up
        for level, clients in enumerate(levels):
            rounds = 2 * (args.rounds + 1) if clients == 1 else args.rounds
            rows = measure(servers, pairs, clients, rounds, args, level)
            load = load_average()
            for label, row in rows.items():
                row["load"] = load
                results[label].append(row)
                print(f"  {label:<28} {clients:>2} clients: {row['requests']} explanations in {row['wall_s']:.1f} s "
                      f"= {row['per_s']:.2f}/s, p50 {fmt(row['p50_ms'])} ms, p99 {fmt(row['p99_ms'])} ms, "
                      f"mean batch {fmt(row['mean_batch'], 1)}  (load {load})", flush=True)
        servers.pop("one at a time (max-batch 1)").stop()
        batching = servers["batching (max-batch 16)"]
        extra = robustness(batching, args, pairs)
        if args.drain:
            extra["drain"] = drain_under_load(batching, pairs, args.drain, args.max_new_tokens)
    finally:
        for server in servers.values():
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
    if "drain" in extra:
        d = extra["drain"]
        print(f"drain: {args.drain} requests in flight at SIGTERM -> "
              + ", ".join(f"{code}: {n}" for code, n in sorted(d["counts"].items()))
              + f"; all answered {d['answered_s']:.1f} s after the signal, exit code {d['exit_code']} after "
                f"{d['exit_s']:.1f} s")
    print(f"\nwhole run {seconds:.0f} s; load average at end: {load_average()}")


if __name__ == "__main__":
    sys.exit(main())
