"""examples/folder_watcher.py as a process against the real server: a file
dropped into the folder ends up ingested in its own session."""
from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time

from conftest import REPO, SAMPLE, book_excerpt, daemon_flags

import longctx
from longctx._segments import segments

WATCHER = REPO / "examples" / "folder_watcher.py"


def read_events(proc: subprocess.Popen, out: "queue.Queue[dict]") -> None:
    for line in proc.stdout:  # type: ignore[union-attr]
        out.put(json.loads(line))


def next_event(events: "queue.Queue[dict]", kind: str, timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        e = events.get(timeout=max(0.1, deadline - time.monotonic()))
        assert e["event"] != "error", e
        if e["event"] == kind:
            return e


def start_watcher(target: str, inbox, *flags: str):
    proc = subprocess.Popen(
        [sys.executable, str(WATCHER), f"--server={target}", f"--dir={inbox}", "--interval=0.2",
         *flags], stdout=subprocess.PIPE, text=True)
    events: "queue.Queue[dict]" = queue.Queue()
    threading.Thread(target=read_events, args=(proc, events), daemon=True).start()
    return proc, events


def test_dropped_file_is_ingested(client, daemon, tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    proc, events = start_watcher(daemon.target, inbox, "--segment-bytes=2048",
                                 "--question=Who is the chapter about?")
    try:
        # Written under a hidden name, then renamed: the watcher sees it whole.
        (inbox / ".part").write_text(SAMPLE.read_text())
        os.replace(inbox / ".part", inbox / "chapter.txt")
        done = next_event(events, "ingested")
        assert done["file"] == "chapter.txt" and done["segments"] >= 3
        answer = next_event(events, "answer")
        assert answer["session"] == done["session"] and answer["finish_reason"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    sessions = list(client.list_sessions(label_selector={"file": "chapter.txt"}))
    assert [s.id for s in sessions] == [done["session"]]
    assert sessions[0].info.tokens == done["session_tokens"] > 0
    state = json.loads((inbox / ".longctx-watcher.json").read_text())
    assert state["files"]["chapter.txt"]["status"] == "done"
    sessions[0].delete()


def test_watcher_restarted_mid_file_continues_the_session(client, daemon, tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    doc = inbox / "chapter.txt"
    doc.write_text(SAMPLE.read_text())
    # A previous watcher created the session and ingested the first two
    # segments (cut the same way) before it stopped.
    session = client.create_session(labels={"source": "folder-watcher", "file": "chapter.txt"})
    head = "".join(list(segments(SAMPLE, 1024))[:2])
    first = session.ingest([head], segment_bytes=1024)
    assert first.segments == 2
    st = doc.stat()
    (inbox / ".longctx-watcher.json").write_text(json.dumps({"files": {"chapter.txt": {
        "session": session.id, "stat": [st.st_size, st.st_mtime_ns], "status": "ingesting"}}}))
    out = subprocess.run(
        [sys.executable, str(WATCHER), f"--server={daemon.target}", f"--dir={inbox}",
         "--interval=0.2", "--segment-bytes=1024", "--once"],
        capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    done = [json.loads(line) for line in out.stdout.splitlines()][-1]
    assert done["event"] == "ingested" and done["session"] == session.id
    assert done["skipped"] == 2
    whole = client.create_session(raw=False)
    want = whole.ingest(SAMPLE, segment_bytes=1024)
    info = session.refresh()
    assert info.next_seq == want.acked_seq + 1 > first.acked_seq + 1
    assert info.tokens == want.session_tokens
    whole.delete()
    session.delete()


def test_server_killed_and_restarted_mid_document(daemon_factory, tmp_path):
    """The acceptance run: the whole of Anna Karenina (about 512k tokens, when
    the shared books are present) streams in while the server is killed and
    restarted once. With a durable store (when this longctxd has --state_dir)
    the same session completes; without, the watcher reports the lost
    session clearly and ingests the book again into a new one. The session
    keeps a window of 5120 tokens (the default model's DCA chunk) and folds
    older text into its Infini memory, so its memory stays bounded."""
    durable = "--state_dir" in daemon_flags()
    d = daemon_factory([f"--state_dir={tmp_path / 'state'}"] if durable else [])
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    book = book_excerpt(1 << 30)
    segment = 16 << 10
    proc, events = start_watcher(d.target, inbox, f"--segment-bytes={segment}",
                                 "--memory=compress", "--window-tokens=5120")
    try:
        (inbox / ".part").write_text(book)
        os.replace(inbox / ".part", inbox / "anna_karenina.txt")
        with longctx.Client(d.target) as c:
            deadline = time.monotonic() + 120
            while not any(s.info.next_seq > 3 for s in c.list_sessions()):
                assert time.monotonic() < deadline, "ingest did not start"
                time.sleep(0.05)
        d.kill()
        d.start()
        if not durable:
            lost = next_event(events, "session_lost")
            assert "restarted without a durable store" in lost["error"]
        # About 700 tokens/s on two cores: the book takes 12-13 minutes.
        done = next_event(events, "ingested", timeout=1800)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    want = len(list(segments([book], segment)))
    with longctx.Client(d.target) as c:
        info = c.session(done["session"]).info
        assert info.next_seq == want + 1
        assert info.tokens >= len(book) // 6  # all of it (about 4 characters a token)
        assert info.folded_tokens > 0
        if durable:
            assert done["reconnects"] >= 1
        else:
            assert done["session"] != lost["session"]
