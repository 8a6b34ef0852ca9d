"""Starts the real longctxd (build/bin/longctxd, or $LONGCTX_DAEMON) on
loopback with the default model ($LONGCTX_MODEL), as tests/integration/daemon.cc
does. Tests that need a server skip when either is missing."""
from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import tempfile
import threading
import time
from typing import Iterator, List, Optional

import grpc
import pytest

import longctx

REPO = pathlib.Path(__file__).resolve().parents[3]
SAMPLE = REPO / "scripts" / "sample_chapter.txt"


def book_excerpt(size: int) -> str:
    """The first `size` characters of Anna Karenina from the shared books
    ($LONGCTX_BOOKS or ../shared/data/books beside the checkout), cut at a
    paragraph; the sample chapter repeated when the books are absent."""
    dirs = [os.environ.get("LONGCTX_BOOKS"), REPO.parent / "shared" / "data" / "books",
            REPO.parent.parent / "shared" / "data" / "books"]
    for d in dirs:
        if d and (pathlib.Path(d) / "anna_karenina.txt").is_file():
            text = (pathlib.Path(d) / "anna_karenina.txt").read_text(encoding="utf-8")
            break
    else:
        text = SAMPLE.read_text() * (size // SAMPLE.stat().st_size + 1)
    cut = text.rfind("\n\n", 0, size)
    return text[:cut + 2 if cut > 0 else size]


def daemon_path() -> pathlib.Path:
    return pathlib.Path(os.environ.get("LONGCTX_DAEMON", REPO / "build" / "bin" / "longctxd"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    """A longctxd process. start() again after kill() restarts it on the same
    port, so a client's channel reconnects to it."""

    def __init__(self, flags: List[str], workdir: pathlib.Path, **client_options: object) -> None:
        self.flags = flags
        self.client_options = client_options  # how to reach it (TLS)
        self.dir = workdir
        self.port = free_port()
        self.proc: Optional[subprocess.Popen] = None
        self.log = workdir / "longctxd.log"

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def state_flags(self) -> List[str]:
        """Each daemon keeps its sessions in its own directory (the default,
        $XDG_STATE_HOME/longctx, is one per user and locked by one server)."""
        if any(f.startswith(("--state_dir=", "--durability=none")) for f in self.flags):
            return []
        return [f"--state_dir={self.dir / 'state'}"]

    def start(self, wait: bool = True) -> None:
        port_file = self.dir / "ports"
        port_file.unlink(missing_ok=True)
        args = [str(daemon_path()), f"--listen=127.0.0.1:{self.port}",
                "--metrics_listen=127.0.0.1:0", f"--port_file={port_file}",
                f"--model={os.environ['LONGCTX_MODEL']}", "--backend=cpu",
                "--kv_cache_bytes=512MiB", *self.state_flags(), *self.flags]
        env = dict(os.environ, OMP_WAIT_POLICY="passive")
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        if wait:
            self.wait_serving()

    def wait_serving(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not (self.dir / "ports").exists():
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"longctxd exited during start-up:\n{self.log.read_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError("no port file after 60 s")
            time.sleep(0.05)
        # Then until the model is loaded (a token-protected server answers
        # UNAUTHENTICATED once it serves).
        with longctx.Client(self.target, **self.client_options) as c:  # type: ignore[arg-type]
            try:
                c.wait_until_serving(max(1.0, deadline - time.monotonic()))
            except longctx.LongctxError as e:
                if e.code != grpc.StatusCode.UNAUTHENTICATED:
                    raise

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture(scope="session")
def daemon_factory() -> Iterator:
    if not os.environ.get("LONGCTX_MODEL"):
        pytest.skip("LONGCTX_MODEL not set: default model unavailable")
    if not daemon_path().is_file():
        pytest.skip(f"{daemon_path()} not built")
    started: List[Daemon] = []
    with tempfile.TemporaryDirectory(prefix="longctx-pytest-") as tmp:
        def make(flags: Optional[List[str]] = None, **client_options: object) -> Daemon:
            d = Daemon(list(flags or []), pathlib.Path(tempfile.mkdtemp(dir=tmp)),
                       **client_options)
            started.append(d)
            d.start()
            return d

        yield make
        for d in started:
            d.stop()


@pytest.fixture(scope="session")
def daemon(daemon_factory) -> Daemon:
    # f32 weights where the build has the setting: tests compare the scores of a
    # session and of its copy rebuilt in other prefill pieces, equal up to
    # summation order only without int8 activations (docs/service.md).
    return daemon_factory(["--cpu_weights=f32"] if "--cpu_weights" in daemon_flags() else [])


@pytest.fixture
def client(daemon: Daemon) -> Iterator[longctx.Client]:
    with longctx.Client(daemon.target, timeout=60) as c:
        c.wait_until_serving()
        yield c


def daemon_flags() -> str:
    """longctxd --help: which settings this build has."""
    out = subprocess.run([str(daemon_path()), "--help"], capture_output=True, text=True)
    return out.stdout + out.stderr


class CuttableProxy:
    """A TCP proxy to `target` on a loopback port; cut() drops every
    connection through it (the client sees the connection break, the server
    keeps running), and new connections are served again."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self._upstream = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.target = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._lock = threading.Lock()
        self._conns: List[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                down, _ = self._listener.accept()
            except OSError:
                return
            up = socket.create_connection(self._upstream)
            with self._lock:
                self._conns += [down, up]
            for a, b in ((down, up), (up, down)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(1 << 16):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass

    def close(self) -> None:
        self._listener.close()
        self.cut()
