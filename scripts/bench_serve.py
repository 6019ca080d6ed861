"""Load benchmark of ``ddit-export serve`` on loopback (issue 13): requests/s and p50/p95/p99 latency at several
client concurrencies, fine-only vs DDiT schedules, 1 vs 2 generator replicas. Bounded: every request has a
timeout, each cell runs a fixed number of requests.

    python scripts/bench_serve.py --bundle engines/flux-mini [--concurrency 1,4,16] [--replicas 1,2] \
        [--requests 32] [--rounds 3] [--out out/bench_serve]

Schedules: ``fine`` (a static schedule of size 1 at every step: fine-only), ``ddit`` (the bundle's default
schedule: flux-mini's calibrated ladder), ``rule`` (the paper's rule, per-request decisions; optional). Each cell
(replicas x schedule x concurrency) is run ``--rounds`` times, schedules interleaved within a round, and the
median round is reported; the DDiT/fine throughput ratio is taken within each round, then the median. Closed
loop: ``c`` client threads each send their next request as soon as the last one returned.

Where the time goes, per request (medians): client latency; the server's total (acceptance -> response ready);
its queue wait (acceptance -> batch start); transformer seconds per request (the step loop's own count; the older
lockstep batches': the batch's divided by its requests); batched = share of requests that ran a step together with
another (``batch_jobs`` >= 2); the rest of the client latency is HTTP + Ray (proxy, front end, handle) +
PNG/base64 + JSON.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPTS = ["a large red circle in the center on a black background",
           "a small blue square at the top left on a striped background",
           "a medium yellow triangle at the bottom right", "a large green circle at the top right"]


def schedule_body(name: str, steps: int) -> dict:
    if name == "fine":
        return {"schedule": ",".join(["1"] * steps)}
    if name == "ddit":
        return {}
    if name == "rule":
        return {"policy": "ddit"}
    raise SystemExit(f"unknown schedule {name!r}: fine, ddit, rule")


def pct(values, q):
    v = sorted(values)
    if not v:
        return float("nan")
    i = min(len(v) - 1, max(0, round(q / 100 * (len(v) - 1))))
    return v[i]


def run_cell(client, schedule: str, steps: int, concurrency: int, n_requests: int, timeout: float) -> dict:
    """``n_requests`` requests from ``concurrency`` closed-loop threads; latencies and server timings."""
    lock = threading.Lock()
    todo = list(range(n_requests))
    lat, server, errors = [], [], []

    def worker():
        while True:
            with lock:
                if not todo:
                    return
                i = todo.pop()
            body = {"prompt": PROMPTS[i % len(PROMPTS)], "seed": i, "steps": steps, "trace": False,
                    "timeout": timeout, **schedule_body(schedule, steps)}
            t0 = time.perf_counter()
            try:
                out, _ = client.generate_raw(body)
            except Exception as e:  # noqa: BLE001 - counted, reported
                with lock:
                    errors.append(str(e))
                continue
            dt = time.perf_counter() - t0
            t = out["timings"]
            b = t["batch"]
            with lock:
                lat.append(dt)
                # the step loop reports this request's own transformer seconds; the older lockstep batches
                # reported the batch's, with its job count
                share = b["transformer_s"] / max(b["jobs"], 1) if "jobs" in b else b["transformer_s"]
                server.append({"total": t["total_s"], "queue": t["queue_s"], "jobs": t["batch_jobs"],
                               "transformer_share": share,
                               "coarse": out["schedule"]["coarse_fraction"],
                               "calls_per_step": sum(b["calls"].values()) / steps})

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout * n_requests)
    wall = time.perf_counter() - t0
    med = lambda key: statistics.median(s[key] for s in server) if server else float("nan")  # noqa: E731
    return {"schedule": schedule, "concurrency": concurrency, "requests": n_requests, "ok": len(lat),
            "errors": len(errors), "error_sample": errors[:2], "wall_s": wall, "rps": len(lat) / wall,
            "p50_s": pct(lat, 50), "p95_s": pct(lat, 95), "p99_s": pct(lat, 99),
            "server_total_s": med("total"), "queue_s": med("queue"), "batch_jobs": med("jobs"),
            "batched_share": sum(x["jobs"] >= 2 for x in server) / len(server) if server else float("nan"),
            "transformer_per_request_s": med("transformer_share"), "coarse_fraction": med("coarse"),
            "calls_per_step": med("calls_per_step")}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", default=str(ROOT / "engines" / "flux-mini"))
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--replicas", default="1,2")
    ap.add_argument("--schedules", default="fine,ddit")
    ap.add_argument("--requests", type=int, default=32, help="Requests per cell (at least the concurrency).")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=28)
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads per replica.")
    ap.add_argument("--max-batch-size", type=int, default=4, help="1: no batching (the trade-off's baseline).")
    ap.add_argument("--batch-wait-ms", type=float, default=10.0)
    ap.add_argument("--num-cpus", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--out", default=str(ROOT / "out" / "bench_serve"))
    a = ap.parse_args(argv)

    from ddit_export.client import Client
    from ddit_export.serve import app

    conc = [int(c) for c in a.concurrency.split(",")]
    schedules = a.schedules.split(",")
    rows, ratios = [], {}
    try:
        for replicas in [int(r) for r in a.replicas.split(",")]:
            opts = app.ServeOptions(bundle=a.bundle, num_replicas=replicas, threads=a.threads,
                                    max_batch_size=a.max_batch_size, batch_wait_s=a.batch_wait_ms / 1000,
                                    max_ongoing_requests=max(16, a.max_batch_size), max_queued_requests=-1,
                                    timeout_s=a.timeout, replica_cpus=a.num_cpus / replicas / 2)
            t0 = time.perf_counter()
            url = app.start(opts, port=a.port, num_cpus=a.num_cpus, log=print)
            client = Client(url, timeout=a.timeout + 30, retries=0)
            client.wait_ready(timeout=180)
            print(f"{replicas} replica(s) ready in {time.perf_counter() - t0:.1f} s", flush=True)
            for s in schedules:  # warm-up: every replica, every size
                run_cell(client, s, a.steps, 2 * replicas, 4 * replicas, a.timeout)
            for c in conc:
                per_round = {s: [] for s in schedules}
                for r in range(a.rounds):
                    for s in (schedules if r % 2 == 0 else schedules[::-1]):
                        cell = run_cell(client, s, a.steps, c, max(a.requests, c), a.timeout)
                        per_round[s].append(cell)
                        print(f"  replicas {replicas} c={c:>2} {s:<5} round {r}: {cell['rps']:.2f} req/s, p50 "
                              f"{cell['p50_s']:.3f} s, batch {cell['batch_jobs']}, errors {cell['errors']}",
                              flush=True)
                for s in schedules:
                    cells = sorted(per_round[s], key=lambda x: x["rps"])
                    rows.append({"replicas": replicas, **cells[len(cells) // 2],
                                 "rps_rounds": [x["rps"] for x in per_round[s]]})
                if "fine" in schedules:
                    for s in schedules:
                        if s != "fine":
                            ratios[f"{s}/fine replicas={replicas} c={c}"] = statistics.median(
                                x["rps"] / f["rps"] for x, f in zip(per_round[s], per_round["fine"]))
            app.stop()
    finally:
        app.stop()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    md = ["| replicas | clients | schedule | req/s | p50 s | p95 s | p99 s | server s | queue s | batch | "
          "batched (>= 2) | transformer s/req | calls/step | coarse |", "|" + "---|" * 14]
    for r in rows:
        md.append(f"| {r['replicas']} | {r['concurrency']} | {r['schedule']} | {r['rps']:.2f} | {r['p50_s']:.3f} | "
                  f"{r['p95_s']:.3f} | {r['p99_s']:.3f} | {r['server_total_s']:.3f} | {r['queue_s']:.3f} | "
                  f"{r['batch_jobs']:g} | {r['batched_share']:.0%} | {r['transformer_per_request_s']:.4f} | {r['calls_per_step']:.2f} | "
                  f"{r['coarse_fraction']:.2f} |")
    md.append("")
    md += [f"- throughput {k}: x{v:.2f} (median of per-round ratios)" for k, v in ratios.items()]
    (out / "bench_serve.md").write_text("\n".join(md) + "\n")
    (out / "bench_serve.json").write_text(json.dumps({"args": vars(a), "rows": rows, "ratios": ratios}, indent=1))
    print("\n".join(md))
    print(f"wrote {out / 'bench_serve.md'} and bench_serve.json")


if __name__ == "__main__":
    main()
