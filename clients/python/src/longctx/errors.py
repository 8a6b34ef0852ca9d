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
        """The error for a failed call: WrongReplicaError when the server
        named the session's home replica, else `cls`."""
        code = err.code() if hasattr(err, "code") else None
        details = err.details() if hasattr(err, "details") else str(err)
        name = code.name if code is not None else "UNKNOWN"
        message = f"{what}: {name}: {details}"
        home = session_home(err)
        if home:
            return WrongReplicaError(message, home, code)
        return cls(message, code)


#: Trailing metadata of a call that reached a replica other than the
#: session's home (docs/service.md "Routing"): the home's replica id.
SESSION_HOME_HEADER = "x-session-home"


def session_home(err: grpc.RpcError) -> str:
    """The home replica a failed call's trailing metadata names, or ""."""
    trailing = getattr(err, "trailing_metadata", None)
    for key, value in (trailing() if callable(trailing) else None) or ():
        if key == SESSION_HOME_HEADER:
            return value if isinstance(value, str) else value.decode()
    return ""


class WrongReplicaError(LongctxError):
    """The call reached a replica that does not hold the session: its id names
    another replica, `home` (FAILED_PRECONDITION with trailing metadata
    x-session-home). Nothing was done. Behind the Envoy gateway this does
    not happen (it routes by the id's home); connected to one replica
    directly, connect to `home` (in Kubernetes the pod
    `<home>.longctxd-headless`) and call again."""

    def __init__(self, message: str, home: str,
                 code: Optional[grpc.StatusCode] = None) -> None:
        super().__init__(message, code)
        self.home = home


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
