"""Python client for longctx, the long-context inference service.

    import longctx

    with longctx.Client("localhost:50051", token="...") as client:
        session = client.create_session(labels={"doc": "anna"})
        session.ingest("anna_karenina.txt", progress=print)
        for chunk in session.ask("Who is Vronsky?"):
            print(chunk, end="")

The generated protocol modules are longctx.v1.longctx_pb2 and
longctx.v1.longctx_pb2_grpc (built from proto/longctx/v1/longctx.proto).
"""
from longctx._client import SESSION_ID_HEADER, Answer, Client, Session
from longctx._ingest import IngestProgress, RetryPolicy
from longctx.errors import (SESSION_HOME_HEADER, LongctxError, RetriesExhaustedError,
                            SessionLostError, WrongReplicaError)
from longctx.v1 import longctx_pb2 as pb

__all__ = [
    "Answer",
    "Client",
    "IngestProgress",
    "LongctxError",
    "RetriesExhaustedError",
    "RetryPolicy",
    "SESSION_HOME_HEADER",
    "SESSION_ID_HEADER",
    "Session",
    "SessionLostError",
    "WrongReplicaError",
    "pb",
]
__version__ = "0.1.0"
