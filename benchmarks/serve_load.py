"""``imrec serve`` under a bounded load on loopback: requests/s, latency, memory growth.

The default MNIST model (trained into ``.bench/mnist-run`` unless ``--run`` names a run, then
exported as a bundle into ``.bench/serve-load/bundle``) is served by ``imrec serve`` in a
subprocess on a free loopback port, for each ``--workers`` count (default 1 and 2) and each
``--max-wait-ms`` batching wait (default 0 and 5 ms). A closed-loop load generator keeps ``c``
requests in flight (``c`` = each of ``--levels``) until ``--requests`` have been answered; each
request posts the same prepared 28x28 PNG (a 7 drawn white on black) as JSON base64 to
``/v1/predict``. Reported per level: requests/s (answered / wall), p50 and p99 latency (send
to last byte), errors (non-200 answers or broken connections); then the best requests/s whose
p99 is at most 50 ms, and, on the first setting, the server's resident memory (VmRSS of the
server and its worker processes) before and after ``--memory-requests`` more requests at the
highest concurrency.

The load generator is a few lines of asyncio speaking HTTP/1.1 over keep-alive connections
(cheaper per request than a client library), and it runs on the same 2 cores as the server:
its CPU time is taken from the server's, so the figures are a floor.

Usage:
    .venv/bin/python benchmarks/serve_load.py                       # ~3 min on 2 idle cores
    .venv/bin/python benchmarks/serve_load.py --requests 300 --memory-requests 1000 \\
        --levels 1,16 --workers 1 --max-wait-ms 5 --md /tmp/bench.md   # a quick check
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from _bench import (
    REPO,
    default_mirror,
    git_commit,
    imrec_train,
    machine,
    md_table,
    now,
    write_section,
)

START, END = "<!-- serve_load:start -->", "<!-- serve_load:end -->"
P99_GOAL_MS, RPS_GOAL, RSS_GOAL_MB = 50, 500, 50
WARMUP = 300


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, help="a finished MNIST run (default: .bench/mnist-run)")
    p.add_argument("--levels", default="1,4,16,32,64", help="concurrency levels")
    p.add_argument("--workers", default="1,2", help="uvicorn worker counts to try")
    p.add_argument("--requests", type=int, default=3000, help="requests per level")
    p.add_argument("--memory-requests", type=int, default=20_000)
    p.add_argument("--backend", choices=["onnxruntime", "torch"], default="onnxruntime")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--max-wait-ms", default="0,5", help="batching waits to try (ms)")
    p.add_argument("--md", type=Path, default=REPO / "BENCHMARKS.md", help="file to update")
    args = p.parse_args(argv)
    args.levels = [int(c) for c in args.levels.split(",")]
    args.workers = [int(w) for w in args.workers.split(",")]
    args.max_wait_ms = [float(t) for t in args.max_wait_ms.split(",")]
    return args


# ---- the model and the request ------------------------------------------------------------


def bundle_for(run: Path | None) -> Path:
    """The bundle to serve: ``--run`` (or the default MNIST run, trained if missing) exported."""
    run = run or REPO / ".bench" / "mnist-run"
    if not (run / "report.json").is_file():
        print(f"training the default MNIST model into {run} (~45 s)", flush=True)
        cmd, env = imrec_train("mnist", [], run, default_mirror())
        subprocess.run(cmd, env=env, check=True)
    bundle = REPO / ".bench" / "serve-load" / "bundle"
    cmd = [sys.executable, "-m", "imrec", "export", str(run), "--out", str(bundle)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return bundle


def digit_png() -> bytes:
    """A 28x28 MNIST-style 7: white strokes on black, already the size the model takes."""
    from PIL import Image, ImageDraw

    img = Image.new("L", (28, 28), 0)
    draw = ImageDraw.Draw(img)
    draw.line([(7, 7), (21, 7), (12, 22)], fill=255, width=3)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def predict_request(port: int, png: bytes, token: str | None = None) -> bytes:
    """The bytes of one ``POST /v1/predict`` with the PNG as JSON base64, keep-alive (with
    ``token``: its ``Authorization: Bearer`` header)."""
    body = json.dumps({"images": [base64.b64encode(png).decode("ascii")]}).encode()
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    head = (f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")  # fmt: skip
    return head.encode() + body


# ---- the server -----------------------------------------------------------------------------


class Server:
    """``imrec serve`` in a subprocess on a free loopback port; ``with`` stops it (SIGTERM)."""

    def __init__(
        self, bundle: Path, workers: int, wait_ms: float, args, log: Path, extra: tuple = ()
    ):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        # One client sends all the load: the per-client rate limit is off (--rate-limit 0)
        # unless ``extra`` says otherwise.
        self.cmd = [sys.executable, "-m", "imrec", "serve", str(bundle), "--port", str(self.port),
                    "--workers", str(workers), "--backend", args.backend,
                    "--max-batch", str(args.max_batch), "--max-wait-ms", f"{wait_ms:g}",
                    "--rate-limit", "0", *extra]  # fmt: skip
        self.log = log

    def __enter__(self) -> Server:
        self.proc = subprocess.Popen(self.cmd, stdout=open(self.log, "w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while not self._ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"server did not start; log {self.log}:\n{self.log.read_text()}")
            time.sleep(0.2)
        return self

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def rss_mb(self) -> float:
        """Resident memory of the server and every process under it (its workers), MB."""
        return sum(_rss_kb(pid) for pid in _tree(self.proc.pid)) / 1024

    def __exit__(self, *exc) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _tree(pid: int) -> list[int]:
    children = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        text = (task / "children").read_text() if (task / "children").exists() else ""
        children += [int(c) for c in text.split()]
    return [pid] + [p for c in children for p in _tree(c)]


def _rss_kb(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    found = re.search(r"VmRSS:\s*(\d+) kB", status)
    return int(found.group(1)) if found else 0


# ---- the load -------------------------------------------------------------------------------


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    length = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
    await reader.readexactly(int(length.group(1)) if length else 0)
    return int(head.split(b" ", 2)[1])


async def _connection(port: int, request: bytes, todo, latencies: list, errors: list) -> None:
    """One keep-alive connection sending requests one after another while any are left."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for _ in todo:  # shared by all connections: the total is bounded, not per connection
        t0 = time.perf_counter()
        try:
            writer.write(request)
            status = await _read_response(reader)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            errors.append("connection")
            writer.close()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            continue
        latencies.append(time.perf_counter() - t0)
        if status != 200:
            errors.append(status)
    writer.close()


async def _load(
    port: int, request: bytes, concurrency: int, total: int
) -> tuple[list, list, float]:
    todo, latencies, errors = iter(range(total)), [], []
    start = time.perf_counter()
    await asyncio.gather(
        *(_connection(port, request, todo, latencies, errors) for _ in range(concurrency))
    )
    return latencies, errors, time.perf_counter() - start


def run_level(port: int, request: bytes, concurrency: int, total: int) -> dict:
    """Requests/s, p50/p99 ms and errors of ``total`` requests at ``concurrency`` in flight."""
    latencies, errors, wall = asyncio.run(_load(port, request, concurrency, total))
    ms = sorted(1000 * s for s in latencies)
    return {
        "concurrency": concurrency,
        "requests": total,
        "rps": total / wall,
        "p50": statistics.median(ms),
        "p99": ms[min(len(ms) - 1, int(0.99 * len(ms)))],
        "errors": len(errors),
    }


def measure(bundle: Path, setting: tuple[int, float], args, png: bytes, memory: bool) -> dict:
    """Every level on one server ``(workers, max wait ms)``; ``memory``: RSS over more requests."""
    workers, wait = setting
    log = REPO / ".bench" / "serve-load" / f"server-{workers}w-{wait:g}ms.log"
    with Server(bundle, workers, wait, args, log) as server:
        request = predict_request(server.port, png)
        run_level(server.port, request, max(args.levels), WARMUP)  # warm-up, not reported
        rows = []
        for c in args.levels:
            rows.append({"workers": workers, "wait": wait,
                         **run_level(server.port, request, c, args.requests)})  # fmt: skip
            print(_line(rows[-1]), flush=True)
        return {"rows": rows, "memory": _memory(server, request, rows, args) if memory else None}


def _line(r: dict) -> str:
    return (f"workers {r['workers']} wait {r['wait']:g} ms c {r['concurrency']:3d}: "
            f"{r['rps']:7.0f} req/s  p50 {r['p50']:6.1f} ms  p99 {r['p99']:6.1f} ms  "
            f"errors {r['errors']}")  # fmt: skip


def _memory(server: Server, request: bytes, rows: list[dict], args) -> dict:
    """RSS before and after ``--memory-requests`` more requests at the highest concurrency."""
    concurrency = max(args.levels)  # the most connections and the biggest batches
    before = server.rss_mb()
    run_level(server.port, request, concurrency, args.memory_requests)
    after = server.rss_mb()
    print(f"RSS {before:.0f} MB -> {after:.0f} MB", flush=True)
    return {"before": before, "after": after, "requests": args.memory_requests,
            "workers": rows[0]["workers"], "wait": rows[0]["wait"], "concurrency": concurrency}  # fmt: skip


# ---- the record -------------------------------------------------------------------------


def render(command: str, info: dict, commit: str, args, results: list[dict]) -> str:
    """The BENCHMARKS.md section, markers included."""
    rows = [r for res in results for r in res["rows"]]
    header = ["workers", "max wait ms", "concurrency", "requests", "req/s", "p50 ms", "p99 ms",
              "errors"]  # fmt: skip
    table = [[r["workers"], f"{r['wait']:g}", r["concurrency"], r["requests"], f"{r['rps']:.0f}",
              f"{r['p50']:.1f}", f"{r['p99']:.1f}", r["errors"]] for r in rows]  # fmt: skip
    memory = next((res["memory"] for res in results if res["memory"]), None)
    lines = [
        START,
        "## Serving: `imrec serve` under load on loopback",
        "",
        f"Command: `{command}`",
        "",
        f"- commit `{commit}`, {now()}",
        *(f"- {k}: {v}" for k, v in info.items()),
        f"- server: `imrec serve BUNDLE --backend {args.backend} --max-batch {args.max_batch} "
        "--max-wait-ms W --workers N --rate-limit 0` (the default MNIST model, exported with "
        "`imrec export`; one client sends all the load, so no per-client limit)",
        "",
        "Closed loop: `concurrency` keep-alive connections each send the next request as soon as",
        "the previous answer is in, until `requests` are answered; every request posts one 28x28",
        "PNG as JSON base64 to `/v1/predict`. Latency is send to last byte. The load generator",
        "(asyncio, raw HTTP/1.1) runs on the same 2 cores as the server and takes CPU from it.",
        "",
        *md_table(header, table),
        "",
        _throughput_goal(rows),
    ]
    if memory:
        lines.append(_memory_goal(memory))
    return "\n".join([*lines, END])


def _throughput_goal(rows: list[dict]) -> str:
    ok = [r for r in rows if r["p99"] <= P99_GOAL_MS and r["errors"] == 0]
    if not ok:
        return f"- no level kept p99 <= {P99_GOAL_MS} ms without errors: goal **not met**"
    best = max(ok, key=lambda r: r["rps"])
    met = "met" if best["rps"] >= RPS_GOAL else "not met"
    return (f"- best req/s with p99 <= {P99_GOAL_MS} ms: **{best['rps']:.0f}** "
            f"({best['workers']} worker(s), max wait {best['wait']:g} ms, concurrency "
            f"{best['concurrency']}, p99 {best['p99']:.1f} ms); goal >= {RPS_GOAL}: **{met}**")  # fmt: skip


def _memory_goal(m: dict) -> str:
    growth = m["after"] - m["before"]
    met = "met" if growth <= RSS_GOAL_MB else "not met"
    return (f"- server RSS over {m['requests']:,} more requests ({m['workers']} worker, max wait "
            f"{m['wait']:g} ms, concurrency {m['concurrency']}): {m['before']:.0f} MB -> "
            f"{m['after']:.0f} MB, growth **{growth:+.1f} MB**; goal <= {RSS_GOAL_MB} MB: "
            f"**{met}**")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load1 = os.getloadavg()[0]
    bundle = bundle_for(args.run)
    png = digit_png()
    settings = [(w, t) for w in args.workers for t in args.max_wait_ms]
    # Memory on the first setting (one worker unless --workers says otherwise).
    results = [measure(bundle, s, args, png, memory=i == 0) for i, s in enumerate(settings)]
    info = {**machine(), "1-minute load average at start": f"{load1:.2f}"}
    command = shlex.join(["python", "benchmarks/serve_load.py", *(argv or sys.argv[1:])])
    write_section(args.md, render(command, info, git_commit(), args, results), START, END)
    print(f"wrote the serve_load section of {args.md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
