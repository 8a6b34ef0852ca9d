"""Errors the client raises. gRPC failures that the client does not handle
itself surface as LongctxError with the gRPC status code."""
from __future__ import annotations

from typing import Optional

import grpc


class LongctxError(Exception):
    """A call failed. `code` is the gRPC status code (None for client-side
    errors); the message is the server's, which names the field at fault."""

    def __init__(self, message: str, code: Optional[grpc.StatusCode] = None) -> None:
        super().__init__(message)
        self.code = code

    @classmethod
    def from_rpc(cls, err: grpc.RpcError, what: str) -> "LongctxError":
        code = err.code() if hasattr(err, "code") else None
        details = err.details() if hasattr(err, "details") else str(err)
        name = code.name if code is not None else "UNKNOWN"
        return cls(f"{what}: {name}: {details}", code)


class SessionLostError(LongctxError):
    """The session is gone from the server while the client was using it: it
    was deleted, it expired, or the server restarted without a durable store.
    `acked_seq` is the last segment the server had acknowledged before."""

    def __init__(self, message: str, session_id: str, acked_seq: int,
                 code: Optional[grpc.StatusCode] = None) -> None:
        super().__init__(message, code)
        self.session_id = session_id
        self.acked_seq = acked_seq


class RetriesExhaustedError(LongctxError):
    """The server stayed unreachable (or kept failing transiently) for longer
    than the retry policy allows."""
