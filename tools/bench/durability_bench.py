#!/usr/bin/env python3
"""What durable sessions cost and how fast they come back, through gRPC.

  cost      ingest throughput with durability=none|ack|sync at 1 and N
            concurrent streams (longctx-loadgen against a fresh longctxd each
            time), the three settings interleaved round by round so that they
            share the machine's state; medians over --rounds, ack and sync
            against none.
  recovery  a server holding sessions of at least --tokens tokens in all is
            killed (SIGKILL) and restarted: seconds to SERVING and until every
            session is rebuilt (longctx_recovery_sessions_pending reaches 0).

Both write the JSON of docs/benchmarks.md ("device", "driver", "commit",
"date", "rows") to --out.

  tools/bench/durability_bench.py cost --bin=build/bin --model=M --backend=cpu \\
      --document=book.txt --out=docs/perf/2026-12-07-cpu-durability.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import re
import signal
import statistics
import subprocess
import tempfile
import time
import urllib.request
from typing import Dict, List, Optional, Tuple

REPO = pathlib.Path(__file__).resolve().parents[2]


class Server:
    """A longctxd on loopback with its own state_dir."""

    def __init__(self, args: argparse.Namespace, state_dir: pathlib.Path, durability: str) -> None:
        self.args = args
        self.dir = state_dir
        self.durability = durability
        self.proc: Optional[subprocess.Popen] = None
        self.grpc = self.metrics = 0

    def start(self) -> float:
        """Starts it; returns the seconds until it answers health as SERVING."""
        ports = self.dir / "ports"
        ports.unlink(missing_ok=True)
        cmd = [f"{self.args.bin}/longctxd", f"--model={self.args.model}",
               f"--backend={self.args.backend}", "--listen=127.0.0.1:0",
               "--metrics_listen=127.0.0.1:0", f"--port_file={ports}",
               f"--state_dir={self.dir / 'state'}", f"--durability={self.durability}",
               f"--kv_cache_bytes={self.args.kv_cache_bytes}", "--log_level=warn"]
        t0 = time.monotonic()
        with open(self.dir / "server.log", "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        while not ports.exists():
            if self.proc.poll() is not None:
                raise RuntimeError((self.dir / "server.log").read_text())
            time.sleep(0.01)
        fields = dict(line.split("=") for line in ports.read_text().split())
        self.grpc, self.metrics = int(fields["grpc"]), int(fields["metrics"])
        while True:
            health = subprocess.run([f"{self.args.bin}/longctx", f"--server={self.target}",
                                     "health"], capture_output=True, text=True)
            if health.returncode == 0:  # SERVING
                return time.monotonic() - t0
            time.sleep(0.01)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc}"

    def scrape(self) -> Dict[str, float]:
        body = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics}/metrics").read().decode()
        out = {}
        for line in body.splitlines():
            if line and not line.startswith("#") and "{" not in line:
                name, value = line.split()[:2]
                out[name] = float(value)
        return out

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait()


def loadgen(args: argparse.Namespace, server: Server, sessions: int, doc_bytes: int,
            keep: bool = False) -> Tuple[int, float]:
    """Ingest only; returns (tokens, seconds) as longctx-loadgen measured them."""
    out = subprocess.run([f"{args.bin}/longctx-loadgen", f"--server={server.target}",
                          f"--document={args.document}", f"--sessions={sessions}",
                          f"--doc-bytes={doc_bytes}", f"--segment-bytes={args.segment_bytes}",
                          "--questions=0", f"--keep-sessions={'true' if keep else 'false'}"],
                         capture_output=True, text=True, check=True)
    m = re.search(r"ingested (\d+) tokens in ([\d.]+)s", out.stdout)
    errors = re.search(r"\| (\d+) \|\n", out.stdout)
    if not m or (errors and errors.group(1) != "0") or out.stderr.strip():
        raise RuntimeError(f"loadgen failed:\n{out.stdout}\n{out.stderr}")
    return int(m.group(1)), float(m.group(2))


def header(args: argparse.Namespace) -> dict:
    device, driver = f"cpu ({args.backend})", ""
    if args.backend == "cuda":
        q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version",
                            "--format=csv,noheader"], capture_output=True, text=True)
        device, driver = [s.strip() for s in q.stdout.splitlines()[0].split(",")]
    else:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                device = f"{line.split(':', 1)[1].strip()} x{len(_cpus())}"
                break
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or args.commit
    return {"device": device, "driver": driver, "commit": commit,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "backend": args.backend, "rows": []}


def _cpus() -> List[str]:
    return [l for l in pathlib.Path("/proc/cpuinfo").read_text().splitlines()
            if l.startswith("processor")]


def row(args: argparse.Namespace, bench: str, tokens: int, batch: int, unit: str, value: float,
        baseline_name: str, baseline: float, ratio: float) -> dict:
    return {"bench": bench, "model": pathlib.Path(args.model).name, "heads": args.heads,
            "head_dim": args.head_dim, "tokens": tokens, "batch": batch, "unit": unit,
            "longctx": round(value, 3), "baseline_name": baseline_name,
            "baseline": round(baseline, 3), "ratio": round(ratio, 4)}


def cost(args: argparse.Namespace) -> dict:
    result = header(args)
    rates: Dict[Tuple[str, int], List[float]] = {}
    tokens: Dict[int, int] = {}
    streams = [1, args.streams]
    with tempfile.TemporaryDirectory(prefix="durability-bench-") as tmp:
        for rnd in range(args.rounds):
            for n in streams:
                for d in ("none", "ack", "sync"):
                    work = pathlib.Path(tmp) / f"{d}-{n}-{rnd}"
                    work.mkdir()
                    s = Server(args, work, d)
                    s.start()
                    try:
                        # Warm the server (first kernels, allocations) outside the timing.
                        loadgen(args, s, 1, min(args.doc_bytes, 4096))
                        tok, sec = loadgen(args, s, n, args.doc_bytes)
                    finally:
                        s.stop()
                    rates.setdefault((d, n), []).append(tok / sec)
                    tokens[n] = tok
                    print(f"round {rnd} streams {n} durability {d}: {tok / sec:.0f} tok/s",
                          flush=True)
    for n in streams:
        none = statistics.median(rates[("none", n)])
        for d in ("none", "ack", "sync"):
            value = statistics.median(rates[(d, n)])
            result["rows"].append(row(args, f"ingest_durability_{d}", tokens[n], n, "tok/s", value,
                                      "durability=none", none, value / none))
    result["rounds"] = args.rounds
    result["samples"] = {f"{d}/{n}": [round(v, 1) for v in r] for (d, n), r in rates.items()}
    return result


def recovery(args: argparse.Namespace) -> dict:
    result = header(args)
    with tempfile.TemporaryDirectory(prefix="recovery-bench-") as tmp:
        s = Server(args, pathlib.Path(tmp), "ack")
        s.start()
        total = 0
        while total < args.tokens:
            tok, _ = loadgen(args, s, args.streams, args.doc_bytes, keep=True)
            total += tok
            print(f"holding {total} tokens", flush=True)
        sessions = int(s.scrape().get("longctx_sessions_active", 0))
        s.stop(signal.SIGKILL)
        serving = s.start()
        t0 = time.monotonic() - serving
        while True:
            m = s.scrape()
            if m.get("longctx_recovery_sessions_pending", 1) == 0 and \
                    m.get("longctx_recovery_sessions", 0) > 0:
                break
            time.sleep(0.05)
        rebuilt = time.monotonic() - t0
        m = s.scrape()
        s.stop()
        print(f"{int(m['longctx_recovery_sessions'])} sessions, "
              f"{int(m['longctx_recovery_tokens'])} tokens: SERVING after {serving:.2f}s, "
              f"rebuilt after {rebuilt:.2f}s; lost {int(m.get('longctx_sessions_lost_total', 0))}",
              flush=True)
        n = int(m["longctx_recovery_sessions"])
        tok = int(m["longctx_recovery_tokens"])
        result["rows"] += [
            row(args, "recovery_to_serving", tok, n, "s", serving, "", 0.0, 0.0),
            row(args, "recovery_all_rebuilt", tok, n, "s", rebuilt, "", 0.0, 0.0),
        ]
        result["sessions_before_kill"] = sessions
        result["sessions_lost"] = int(m.get("longctx_sessions_lost_total", 0))
        result["rebuilt_tokens"] = int(m["longctx_recovery_tokens_rebuilt"])
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=["cost", "recovery"])
    p.add_argument("--bin", default=str(REPO / "build" / "bin"))
    p.add_argument("--model", required=True)
    p.add_argument("--backend", default="cpu")
    p.add_argument("--document", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--streams", type=int, default=64)
    p.add_argument("--doc_bytes", type=int, default=8192, help="bytes each stream ingests")
    p.add_argument("--segment_bytes", type=int, default=2048)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--tokens", type=int, default=1_000_000, help="recovery: tokens to hold")
    p.add_argument("--kv_cache_bytes", default="2GiB")
    p.add_argument("--heads", type=int, default=9)
    p.add_argument("--head_dim", type=int, default=64)
    p.add_argument("--commit", default="", help="when the tree is no git checkout")
    args = p.parse_args()
    result = cost(args) if args.what == "cost" else recovery(args)
    pathlib.Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
