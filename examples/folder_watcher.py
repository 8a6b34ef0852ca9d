#!/usr/bin/env python3
"""Watches a folder and streams each new document into its own longctx
session: a small service built on the Python client (clients/python).

Every `--interval` seconds it lists the folder; a file whose size and mtime
held still since the previous look is complete, and is ingested into a new
session labelled source=folder-watcher, file=<name>. Progress is kept in a
state file, so a restarted watcher continues a half-ingested document where
the session stands (Session.ingest with first_seq=1 skips what the session
already holds). A server that restarts mid-document is reconnected to with
backoff; if the session did not survive (no durable store), the watcher says
so and ingests the document again into a new session.

A document longer than the server's max_session_tokens needs a session that
keeps a window: `--memory=slide` (drop what leaves the window) or
`--memory=compress` (fold it into the compressive memory), with
`--window-tokens` (a multiple of the DCA chunk length) and `--sink-tokens`.

Events go to stdout as JSON lines: ingested, session_lost, answer, error.

  pip install ./clients/python
  examples/folder_watcher.py --server=localhost:50051 --dir=inbox \\
      [--token=T] [--question="What is this document about?"] [--once] \\
      [--memory=compress --window-tokens=8192 --sink-tokens=64]
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import os
import pathlib
import signal
import sys
import time
from typing import Dict, Optional, Tuple

import longctx

Stat = Tuple[int, int]  # size, mtime_ns


def emit(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


class Watcher:
    def __init__(self, client: longctx.Client, folder: pathlib.Path, state_path: pathlib.Path,
                 pattern: str, segment_bytes: int, question: Optional[str],
                 memory: Optional[longctx.pb.MemoryConfig] = None) -> None:
        self.client = client
        self.memory = memory  # the sessions' window settings (None: the server's)
        self.folder = folder
        self.state_path = state_path
        self.pattern = pattern
        self.segment_bytes = segment_bytes
        self.question = question
        self.previous: Dict[str, Stat] = {}
        self.state: Dict[str, dict] = {}
        if state_path.exists():
            self.state = json.loads(state_path.read_text()).get("files", {})

    def save(self) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"files": self.state}, indent=1))
        os.replace(tmp, self.state_path)

    def complete_files(self) -> Dict[str, Stat]:
        """Files whose size and mtime did not change since the last poll."""
        now: Dict[str, Stat] = {}
        for p in sorted(self.folder.iterdir()):
            if p.name.startswith(".") or not p.is_file() or p == self.state_path:
                continue
            if fnmatch.fnmatch(p.name, self.pattern):
                st = p.stat()
                now[p.name] = (st.st_size, st.st_mtime_ns)
        stable = {n: s for n, s in now.items() if self.previous.get(n) == s}
        self.previous = now
        return stable

    def poll(self) -> None:
        for name, stat in self.complete_files().items():
            entry = self.state.get(name)
            if entry and entry["status"] == "done" and tuple(entry["stat"]) == stat:
                continue
            try:
                self.ingest(name, stat, entry)
            except longctx.SessionLostError as e:
                # Without a durable store a restart loses the session: start over.
                emit("session_lost", file=name, session=e.session_id, error=str(e))
                self.state.pop(name, None)
                self.save()
            except (longctx.LongctxError, OSError, UnicodeDecodeError) as e:
                emit("error", file=name, error=str(e))

    def ingest(self, name: str, stat: Stat, entry: Optional[dict]) -> None:
        session = None
        if entry and entry["status"] == "ingesting" and tuple(entry["stat"]) == stat:
            session = self.client.session(entry["session"])  # continue a half-done file
        if session is None:
            if entry:  # a new version of the file: forget the old session
                try:
                    self.client.delete_session(entry["session"])
                except longctx.LongctxError:
                    pass
            session = self.client.create_session(
                labels={"source": "folder-watcher", "file": name[:256]}, memory=self.memory)
            self.state[name] = {"session": session.id, "stat": list(stat), "status": "ingesting"}
            self.save()
        start = time.monotonic()
        result = session.ingest(self.folder / name, first_seq=1,
                                segment_bytes=self.segment_bytes)
        self.state[name]["status"] = "done"
        self.save()
        emit("ingested", file=name, session=session.id, segments=result.segments,
             skipped=result.skipped, session_tokens=result.session_tokens,
             reconnects=result.reconnects, seconds=round(time.monotonic() - start, 3))
        if self.question:
            answer = session.ask(self.question, max_tokens=64)
            emit("answer", file=name, session=session.id, text=answer.text,
                 finish_reason=answer.finish_reason)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--server", default=os.environ.get("LONGCTX_SERVER", "localhost:50051"))
    ap.add_argument("--token", default=os.environ.get("LONGCTX_TOKEN"))
    ap.add_argument("--tls-ca", default=os.environ.get("LONGCTX_TLS_CA"))
    ap.add_argument("--dir", required=True, type=pathlib.Path)
    ap.add_argument("--state", type=pathlib.Path, help="default: DIR/.longctx-watcher.json")
    ap.add_argument("--pattern", default="*", help="file name pattern (default: all)")
    ap.add_argument("--interval", type=float, default=2.0, help="seconds between polls")
    ap.add_argument("--segment-bytes", type=int, default=16 << 10)
    ap.add_argument("--question", help="ask each ingested document this")
    ap.add_argument("--once", action="store_true",
                    help="ingest what is there (two polls apart) and exit")
    ap.add_argument("--memory", choices=["reject", "slide", "compress"], default="reject",
                    help="past the window: fail (reject, the default), slide or compress")
    ap.add_argument("--window-tokens", type=int, default=0,
                    help="exact-attention window (required by slide and compress)")
    ap.add_argument("--sink-tokens", type=int, default=0, help="leading tokens always kept")
    args = ap.parse_args()
    memory = None
    if args.memory != "reject" or args.window_tokens:
        policy = {"reject": longctx.pb.OVERFLOW_POLICY_REJECT,
                  "slide": longctx.pb.OVERFLOW_POLICY_SLIDE,
                  "compress": longctx.pb.OVERFLOW_POLICY_COMPRESS}[args.memory]
        memory = longctx.pb.MemoryConfig(window_tokens=args.window_tokens,
                                         sink_tokens=args.sink_tokens, overflow=policy)

    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    state = args.state or args.dir / ".longctx-watcher.json"
    with longctx.Client(args.server, token=args.token, root_certificates=args.tls_ca) as client:
        watcher = Watcher(client, args.dir, state, args.pattern, args.segment_bytes,
                          args.question, memory)
        polls = 0
        while not stopping:
            watcher.poll()
            polls += 1
            if args.once and polls >= 2:
                break
            time.sleep(args.interval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
