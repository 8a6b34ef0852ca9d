"""Ingest with acknowledgements and resume (docs/service.md "Ingest").

Segments carry sequence numbers; the server applies them in order, each whole
or not at all, and acknowledges each once applied. Sent segments stay in a
bounded window until acknowledged. When the stream fails transiently (the
server is unreachable, restarting or draining), the run waits with exponential
backoff until GetSession answers, checks that the session still holds every
acknowledged segment (its next_seq is past them), and sends the
unacknowledged ones again from the first on a new stream: no acknowledged
segment is ever sent twice.

Why not resume at next_seq itself: it counts segments claimed by the broken
stream that may still be in flight there, and those fail (moving next_seq
back) when the server notices the stream is gone. Resending from the first
unacknowledged segment is always right: one the server applied after all is
acknowledged again as a duplicate and not applied twice; one still in flight
is acknowledged once it is done (ABORTED, retried, if it failed).
"""
from __future__ import annotations

import dataclasses
import random
import threading
import time
from collections import deque
from typing import Callable, Deque, Iterator, List, Optional, Tuple

import grpc

from longctx.errors import LongctxError, RetriesExhaustedError, SessionLostError
from longctx.v1 import longctx_pb2 as pb

#: Codes after which a call may succeed if tried again later.
TRANSIENT_CODES = frozenset({
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
})


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff between attempts: initial_backoff, times multiplier
    after each failure up to max_backoff, each delay spread by +-jitter (a
    fraction). Gives up after max_elapsed seconds without progress."""

    initial_backoff: float = 0.2
    max_backoff: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.2
    max_elapsed: float = 120.0

    def delays(self) -> Iterator[float]:
        delay = self.initial_backoff
        while True:
            yield delay * (1 + self.jitter * (2 * random.random() - 1))
            delay = min(delay * self.multiplier, self.max_backoff)


@dataclasses.dataclass
class IngestProgress:
    """Where an ingest stands; passed to the progress callback after each
    acknowledgement and returned at the end."""

    segments: int = 0        # segments acknowledged (or found applied) in this call
    bytes: int = 0           # UTF-8 bytes of those segments
    tokens: int = 0          # tokens the acknowledged segments added
    session_tokens: int = 0  # the session's position after the last acknowledgement
    acked_seq: int = 0       # the last sequence number the session holds
    skipped: int = 0         # segments already in the session before this call, not sent
    duplicates: int = 0      # resent segments the session already held (acks lost in a failure)
    reconnects: int = 0      # streams opened again after a failure


Segment = Tuple[int, str, int]  # seq, text, UTF-8 bytes
StreamFn = Callable[[Iterator[pb.IngestRequest]], Iterator[pb.IngestResponse]]
GetSessionFn = Callable[[], pb.Session]


class IngestRun:
    """One Session.ingest call. Not reusable; run() on one thread (gRPC reads
    the request iterator on its own threads, hence the lock)."""

    def __init__(self, session_id: str, segments: Iterator[Segment], open_stream: StreamFn,
                 get_session: GetSessionFn, *, next_seq: int, window: int, resume: bool,
                 retry: RetryPolicy, progress: Optional[Callable[[IngestProgress], None]]):
        self._id = session_id
        self._open_stream = open_stream
        self._get_session = get_session
        self._resume = resume
        self._retry = retry
        self._progress_cb = progress
        self._window = max(1, window)
        self._cv = threading.Condition()
        # Guarded by _cv: the source, the unacknowledged window, the attempt
        # whose request iterator may pull from the source.
        self._source = segments
        self._pending: Deque[Segment] = deque()
        self._skip_below = next_seq
        self._live = 0
        self._source_error: Optional[BaseException] = None
        self.progress = IngestProgress(acked_seq=next_seq - 1)

    # ------------------------------------------------------------ requests

    def _next_from_source(self) -> Optional[Segment]:
        """REQUIRES: _cv held. The next segment not yet in the session."""
        while True:
            try:
                item = next(self._source, None)
            except Exception as e:  # a read or decode error: end the stream, raise later
                self._source_error = e
                return None
            if item is None or item[0] >= self._skip_below:
                return item
            self.progress.skipped += 1

    def _requests(self, attempt: int) -> Iterator[pb.IngestRequest]:
        with self._cv:
            resend: List[Segment] = list(self._pending)
        for seq, text, _ in resend:
            yield self._request(seq, text)
        while True:
            with self._cv:
                while self._live == attempt and len(self._pending) >= self._window:
                    self._cv.wait()
                if self._live != attempt:
                    return
                item = self._next_from_source()
                if item is None:
                    return
                self._pending.append(item)
            yield self._request(item[0], item[1])

    def _request(self, seq: int, text: str) -> pb.IngestRequest:
        return pb.IngestRequest(session_id=self._id, segment=pb.Segment(seq=seq, text=text))

    # ------------------------------------------------------------ acks

    def _on_ack(self, ack: pb.IngestResponse) -> None:
        p = self.progress
        with self._cv:
            while self._pending and self._pending[0][0] <= ack.seq:
                seq, _, nbytes = self._pending.popleft()
                p.segments += 1
                p.bytes += nbytes
            self._cv.notify_all()
        if ack.duplicate:
            p.duplicates += 1
        else:
            p.tokens += ack.tokens_ingested
        p.session_tokens = ack.session_tokens
        p.acked_seq = max(p.acked_seq, ack.seq)
        if self._progress_cb is not None:
            self._progress_cb(p)

    # ------------------------------------------------------------ run

    def run(self) -> IngestProgress:
        delays = self._retry.delays()
        last_progress = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            with self._cv:
                self._live = attempt
            acked_before = self.progress.acked_seq
            error: Optional[grpc.RpcError] = None
            call = self._open_stream(self._requests(attempt))
            try:
                for ack in call:
                    self._on_ack(ack)
            except grpc.RpcError as e:
                error = e
            finally:
                with self._cv:
                    self._live = 0
                    self._cv.notify_all()
                # Ends the stream if we leave early (an exception in the
                # progress callback); a finished call ignores it.
                cancel = getattr(call, "cancel", None)
                if cancel is not None:
                    cancel()
            if self._source_error is not None:
                raise self._source_error
            if self.progress.acked_seq > acked_before:
                delays = self._retry.delays()
                last_progress = time.monotonic()
            if error is None:
                with self._cv:
                    if not self._pending:
                        return self.progress
                    first = self._pending[0][0]
                # The server ended the stream without applying everything
                # (e.g. a message it could not read): not transient.
                raise LongctxError(f"Ingest: the server ended the stream before acknowledging "
                                   f"segment {first} of session {self._id}")
            if not self._resume or error.code() not in TRANSIENT_CODES:
                raise self._fail(error)
            last_progress = self._reconnect(delays, last_progress, error)

    def _fail(self, err: grpc.RpcError) -> LongctxError:
        if err.code() == grpc.StatusCode.NOT_FOUND:
            return self._lost("NOT_FOUND", err.code())
        return LongctxError.from_rpc(err, f"Ingest into session {self._id}")

    def _lost(self, why: str, code: Optional[grpc.StatusCode]) -> SessionLostError:
        acked = self.progress.acked_seq
        return SessionLostError(
            f"session {self._id} is gone from the server ({why}): it was deleted or expired, or "
            f"the server restarted without a durable store; segments through seq {acked} had "
            f"been acknowledged", self._id, acked, code)

    def _reconnect(self, delays: Iterator[float], last_progress: float,
                   cause: grpc.RpcError) -> float:
        """Waits until GetSession answers and drops what the session holds.
        Returns the new time of last progress."""
        while True:
            if time.monotonic() - last_progress > self._retry.max_elapsed:
                raise RetriesExhaustedError(
                    f"Ingest into session {self._id}: no progress for "
                    f"{self._retry.max_elapsed:.0f} s; last error {cause.code().name}: "
                    f"{cause.details()}", cause.code())
            time.sleep(next(delays))
            try:
                info = self._get_session()
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.NOT_FOUND:
                    raise self._lost("NOT_FOUND after reconnecting", e.code()) from None
                if e.code() not in TRANSIENT_CODES:
                    raise LongctxError.from_rpc(e, f"GetSession {self._id}") from None
                cause = e
                continue
            break
        if info.state == pb.SESSION_STATE_EXPIRED:
            raise self._lost("expired", None)
        p = self.progress
        if info.next_seq <= p.acked_seq:
            raise self._lost(f"it holds segments up to seq {info.next_seq - 1} only", None)
        p.session_tokens = info.tokens
        p.reconnects += 1
        return time.monotonic()
