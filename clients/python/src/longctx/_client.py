"""Client and Session: the longctx service (proto/longctx/v1/longctx.proto,
docs/service.md) from Python."""
from __future__ import annotations

import datetime
import os
import time
from typing import (BinaryIO, Callable, Iterable, Iterator, List, Mapping, Optional,
                    Sequence, Tuple, Union)

import grpc

from longctx import _segments
from longctx._ingest import TRANSIENT_CODES, IngestProgress, IngestRun, RetryPolicy
from longctx.errors import LongctxError, SessionLostError
from longctx.v1 import longctx_pb2 as pb
from longctx.v1 import longctx_pb2_grpc as pb_grpc

#: Metadata naming the session of a call, for gateways that route by session.
SESSION_ID_HEADER = "x-session-id"

_EXPORT_CHUNK = 256 << 10
_PathOrBytes = Union[str, "os.PathLike[str]", bytes]
Seconds = Union[float, int, datetime.timedelta]

_FINISH_REASONS = {
    pb.FINISH_REASON_STOP: "stop",
    pb.FINISH_REASON_LENGTH: "length",
    pb.FINISH_REASON_STOP_STRING: "stop_string",
    pb.FINISH_REASON_CONTEXT: "context",
}


def _read_pem(value: Optional[_PathOrBytes]) -> Optional[bytes]:
    if value is None or isinstance(value, bytes):
        return value
    with open(value, "rb") as f:
        return f.read()


def _seconds(value: Seconds) -> float:
    return value.total_seconds() if isinstance(value, datetime.timedelta) else float(value)


class Client:
    """A channel to one longctx server. Thread-safe; close() (or use it as a
    context manager) when done.

    target: "host:port". token: a bearer token (sent as `authorization`).
    TLS: root_certificates (PEM bytes or a path; tls=True alone uses the
    system roots), and for mutual TLS certificate_chain and private_key.
    timeout: seconds for unary calls (None: no deadline). retry: backoff of
    Session.ingest's reconnects. options: extra gRPC channel arguments.
    """

    def __init__(self, target: str, *, token: Optional[str] = None, tls: bool = False,
                 root_certificates: Optional[_PathOrBytes] = None,
                 certificate_chain: Optional[_PathOrBytes] = None,
                 private_key: Optional[_PathOrBytes] = None,
                 timeout: Optional[float] = 30.0, retry: RetryPolicy = RetryPolicy(),
                 options: Sequence[Tuple[str, object]] = ()) -> None:
        if (certificate_chain is None) != (private_key is None):
            raise ValueError("a client certificate needs both certificate_chain and private_key")
        opts: List[Tuple[str, object]] = [
            ("grpc.max_receive_message_length", 64 << 20),
            ("grpc.max_send_message_length", 64 << 20),
            # Reconnect quickly to a restarted server: ingest has its own backoff.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ]
        opts.extend(options)
        if tls or root_certificates is not None or certificate_chain is not None:
            creds = grpc.ssl_channel_credentials(
                root_certificates=_read_pem(root_certificates),
                private_key=_read_pem(private_key),
                certificate_chain=_read_pem(certificate_chain))
            self._channel = grpc.secure_channel(target, creds, options=opts)
        else:
            self._channel = grpc.insecure_channel(target, options=opts)
        self._stub = pb_grpc.LongContextStub(self._channel)
        self._token = token
        self.target = target
        self.timeout = timeout
        self.retry = retry

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ plumbing

    def _metadata(self, session_id: str = "") -> List[Tuple[str, str]]:
        md = []
        if self._token:
            md.append(("authorization", f"Bearer {self._token}"))
        if session_id:
            md.append((SESSION_ID_HEADER, session_id))
        return md

    def _unary(self, method: str, request: object, session_id: str = "",
               timeout: Optional[float] = None) -> object:
        try:
            return getattr(self._stub, method)(
                request, metadata=self._metadata(session_id),
                timeout=timeout if timeout is not None else self.timeout)
        except grpc.RpcError as e:
            raise LongctxError.from_rpc(e, method) from None

    # ------------------------------------------------------------ calls

    def server_info(self) -> pb.ServerInfo:
        """The model, settings, limits and build of the server."""
        return self._unary("GetServerInfo", pb.GetServerInfoRequest())  # type: ignore[return-value]

    def wait_until_serving(self, timeout: float = 60.0) -> pb.ServerInfo:
        """GetServerInfo until the server answers (it is UNAVAILABLE while it
        starts); LongctxError after `timeout` seconds, or at once for another
        error (e.g. UNAUTHENTICATED)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self._stub.GetServerInfo(pb.GetServerInfoRequest(),
                                                metadata=self._metadata(), timeout=5)
            except grpc.RpcError as e:
                waiting = e.code() in (grpc.StatusCode.UNAVAILABLE,
                                       grpc.StatusCode.DEADLINE_EXCEEDED)
                if not waiting or time.monotonic() > deadline:
                    raise LongctxError.from_rpc(e, f"{self.target} is not serving") from None
                time.sleep(0.2)

    def create_session(self, session_id: str = "", *, labels: Optional[Mapping[str, str]] = None,
                       ttl: Optional[Seconds] = None, raw: bool = False,
                       system_prompt: str = "",
                       attention: Optional[pb.AttentionConfig] = None,
                       memory: Optional[pb.MemoryConfig] = None) -> "Session":
        """A new empty session (the server picks the id when none is given).
        raw: no chat template (prompts are appended verbatim)."""
        req = pb.CreateSessionRequest(session_id=session_id, labels=dict(labels or {}),
                                      system_prompt=system_prompt,
                                      prompt_format=pb.PROMPT_FORMAT_RAW if raw else
                                      pb.PROMPT_FORMAT_UNSPECIFIED)
        if ttl is not None:
            req.ttl.FromTimedelta(datetime.timedelta(seconds=_seconds(ttl)))
        if attention is not None:
            req.attention.CopyFrom(attention)
        if memory is not None:
            req.memory.CopyFrom(memory)
        info = self._unary("CreateSession", req, session_id)
        return Session(self, info)  # type: ignore[arg-type]

    def session(self, session_id: str) -> "Session":
        """An existing session (GetSession)."""
        return Session(self, self._get_session(session_id))

    def _get_session(self, session_id: str) -> pb.Session:
        return self._unary("GetSession", pb.GetSessionRequest(session_id=session_id),
                           session_id)  # type: ignore[return-value]

    def list_sessions(self, label_selector: Optional[Mapping[str, str]] = None,
                      page_size: int = 0) -> Iterator["Session"]:
        """The caller's sessions in id order, fetched a page at a time."""
        token = ""
        while True:
            resp: pb.ListSessionsResponse = self._unary(  # type: ignore[assignment]
                "ListSessions", pb.ListSessionsRequest(
                    page_size=page_size, page_token=token,
                    label_selector=dict(label_selector or {})))
            for s in resp.sessions:
                yield Session(self, s)
            token = resp.next_page_token
            if not token:
                return

    def delete_session(self, session_id: str) -> None:
        self._unary("DeleteSession", pb.DeleteSessionRequest(session_id=session_id), session_id)

    def import_session(self, data: Union[bytes, BinaryIO, Iterable[bytes], str, "os.PathLike[str]"],
                       session_id: str = "", *,
                       labels: Optional[Mapping[str, str]] = None) -> "Session":
        """Recreates a session from Session.export()'s bytes (bytes, a binary
        file, a path or an iterable of byte chunks), under `session_id` or a
        new id; labels replace the exported ones when given."""
        if isinstance(data, (str, os.PathLike)):
            with open(data, "rb") as f:
                return self.import_session(f.read(), session_id, labels=labels)
        if isinstance(data, bytes):
            chunks: Iterable[bytes] = (data[i:i + _EXPORT_CHUNK]
                                       for i in range(0, max(len(data), 1), _EXPORT_CHUNK))
        elif hasattr(data, "read"):
            reader = data.read
            chunks = iter(lambda: reader(_EXPORT_CHUNK), b"")
        else:
            chunks = data

        def requests() -> Iterator[pb.ImportSessionRequest]:
            first = True
            for chunk in chunks:
                if first:
                    yield pb.ImportSessionRequest(session_id=session_id,
                                                  labels=dict(labels or {}), data=chunk)
                    first = False
                else:
                    yield pb.ImportSessionRequest(data=chunk)

        try:
            info = self._stub.ImportSession(requests(), metadata=self._metadata(session_id),
                                            timeout=None)
        except grpc.RpcError as e:
            raise LongctxError.from_rpc(e, "ImportSession") from None
        return Session(self, info)


class Answer:
    """A streamed answer: iterate for text chunks as they are generated; after
    the stream, finish_reason ("stop", "length", "stop_string", "context"),
    usage (prompt, generated and session tokens) and complete (the whole
    GenerateComplete message) are set. `text` consumes the rest and returns
    the whole answer."""

    def __init__(self, call: Iterator[pb.GenerateResponse], session_id: str) -> None:
        self._call = call
        self._session_id = session_id
        self._parts: List[str] = []
        self.complete: Optional[pb.GenerateComplete] = None

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        while True:
            try:
                msg = next(self._call)
            except StopIteration:
                if self.complete is None:
                    raise LongctxError("Generate: the stream ended without a completion") from None
                raise
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.NOT_FOUND:
                    raise SessionLostError(f"Generate: {e.details()}", self._session_id, 0,
                                           e.code()) from None
                raise LongctxError.from_rpc(e, "Generate") from None
            if msg.HasField("complete"):
                self.complete = msg.complete
            elif msg.chunk.text:
                self._parts.append(msg.chunk.text)
                return msg.chunk.text

    @property
    def text(self) -> str:
        for _ in self:
            pass
        return "".join(self._parts)

    @property
    def finish_reason(self) -> Optional[str]:
        return _FINISH_REASONS.get(self.complete.finish_reason) if self.complete else None

    @property
    def usage(self) -> Optional[pb.Usage]:
        return self.complete.usage if self.complete else None

    def cancel(self) -> None:
        """Stops the generation (the server stops at its next step)."""
        cancel = getattr(self._call, "cancel", None)
        if cancel is not None:
            cancel()


class Session:
    """A session on the server. `info` is the last Session message seen
    (refresh() fetches it again)."""

    def __init__(self, client: Client, info: pb.Session) -> None:
        self._client = client
        self.info = info
        self.id = info.id

    def __repr__(self) -> str:
        return f"Session({self.id!r}, tokens={self.info.tokens}, next_seq={self.info.next_seq})"

    def refresh(self) -> pb.Session:
        self.info = self._client._get_session(self.id)
        return self.info

    def ingest(self, source: "_segments.Source", *, resume: bool = True,
               segment_bytes: int = 16 << 10, first_seq: Optional[int] = None,
               window: int = 16,
               progress: Optional[Callable[[IngestProgress], None]] = None) -> IngestProgress:
        """Streams a document into the session: a path, an open file (text,
        or binary UTF-8) or an iterable of str pieces, cut into segments of at
        most segment_bytes at paragraph, line or word boundaries.

        Segments are numbered from first_seq (default: the session's next_seq);
        those below the session's next_seq are already in it and are skipped,
        so running the same document again from first_seq=1 continues where a
        previous run stopped. With resume, a transient failure (UNAVAILABLE,
        a dropped connection, a restarting server) reconnects with backoff,
        checks with GetSession that the session still holds everything
        acknowledged, and resends the unacknowledged segments (the server
        acknowledges any it applied anyway as duplicates); acknowledged
        segments are never sent again. SessionLostError if the session is gone (deleted,
        expired, or the server restarted without a durable store);
        RetriesExhaustedError after client.retry.max_elapsed seconds without
        progress. `progress` is called after each acknowledgement.
        """
        c = self._client
        info = self._get_with_retry() if resume else self.refresh()
        self.info = info
        seq0 = info.next_seq if first_seq is None else first_seq
        numbered = ((seq0 + i, text, len(text.encode("utf-8")))
                    for i, text in enumerate(_segments.segments(source, segment_bytes)))

        def open_stream(requests: Iterator[pb.IngestRequest]) -> Iterator[pb.IngestResponse]:
            return c._stub.Ingest(requests, metadata=c._metadata(self.id))

        def get_session() -> pb.Session:
            return c._stub.GetSession(pb.GetSessionRequest(session_id=self.id),
                                      metadata=c._metadata(self.id), timeout=c.timeout)

        run = IngestRun(self.id, numbered, open_stream, get_session, next_seq=info.next_seq,
                        window=window, resume=resume, retry=c.retry, progress=progress)
        return run.run()

    def _get_with_retry(self) -> pb.Session:
        """GetSession, waiting out a server that is restarting."""
        c = self._client
        delays = c.retry.delays()
        deadline = time.monotonic() + c.retry.max_elapsed
        while True:
            try:
                return c._stub.GetSession(pb.GetSessionRequest(session_id=self.id),
                                          metadata=c._metadata(self.id), timeout=c.timeout)
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.NOT_FOUND:
                    raise SessionLostError(f"GetSession: session {self.id} is gone: "
                                           f"{e.details()}", self.id, 0, e.code()) from None
                if e.code() not in TRANSIENT_CODES or time.monotonic() > deadline:
                    raise LongctxError.from_rpc(e, f"GetSession {self.id}") from None
                time.sleep(next(delays))

    def ask(self, prompt: str, *, max_tokens: int = 0, temperature: float = 0.0,
            top_k: int = 0, top_p: Optional[float] = None, seed: Optional[int] = None,
            repetition_penalty: Optional[float] = None, stop: Sequence[str] = (),
            persist: bool = False, parse_special: bool = False,
            timeout: Optional[float] = None) -> Answer:
        """Asks a question (CHAT sessions) or continues the text (RAW) and
        returns the streamed Answer. Defaults: greedy, the server's max_tokens.
        persist keeps the question and answer in the session."""
        sampling = pb.SamplingParams(temperature=temperature, top_k=top_k)
        if top_p is not None:
            sampling.top_p = top_p
        if seed is not None:
            sampling.seed = seed
        if repetition_penalty is not None:
            sampling.repetition_penalty = repetition_penalty
        req = pb.GenerateRequest(session_id=self.id, prompt=prompt, sampling=sampling,
                                 max_tokens=max_tokens, stop=list(stop), persist=persist,
                                 parse_special=parse_special)
        call = self._client._stub.Generate(req, metadata=self._client._metadata(self.id),
                                           timeout=timeout)
        return Answer(call, self.id)

    def score(self, text: Union[str, Sequence[int]], *, per_token: bool = False,
              parse_special: bool = False) -> pb.ScoreResponse:
        """Log-probability of a continuation (text, or token ids) given the
        session; the session is left as it was."""
        req = pb.ScoreRequest(session_id=self.id, per_token=per_token,
                              parse_special=parse_special)
        if isinstance(text, str):
            req.text = text
        else:
            req.tokens.ids.extend(text)
        return self._client._unary("Score", req, self.id)  # type: ignore[return-value]

    def export(self) -> bytes:
        """The session's state as bytes that Client.import_session accepts on
        any server with the same model."""
        return b"".join(self.export_chunks())

    def export_chunks(self) -> Iterator[bytes]:
        """The export as it streams, for writing to a file."""
        c = self._client
        try:
            for msg in c._stub.ExportSession(pb.ExportSessionRequest(session_id=self.id),
                                             metadata=c._metadata(self.id), timeout=None):
                yield msg.data
        except grpc.RpcError as e:
            raise LongctxError.from_rpc(e, "ExportSession") from None

    def delete(self) -> None:
        self._client.delete_session(self.id)


__all__ = ["Answer", "Client", "IngestProgress", "RetryPolicy", "Session", "SESSION_ID_HEADER"]
