"""The client against the real longctxd: ingest, streamed answers, scores,
export/import, listing, auth, and resume across a server restart."""
from __future__ import annotations

import shutil
import subprocess
import threading

import grpc
import pytest
from conftest import SAMPLE, CuttableProxy, daemon_flags

import longctx


def test_ingest_ask_score(client):
    session = client.create_session(labels={"test": "ingest_ask_score"})
    seen = []
    result = session.ingest(SAMPLE, segment_bytes=1024, progress=lambda p: seen.append(p.acked_seq))
    info = session.refresh()
    assert result.segments == len(seen) >= 5
    assert seen == sorted(seen) and seen[-1] == info.next_seq - 1
    assert result.bytes == SAMPLE.stat().st_size
    assert result.session_tokens == info.tokens > result.tokens > 0
    assert result.reconnects == 0

    answer = session.ask("Who is the chapter about?", max_tokens=12)
    chunks = list(answer)
    assert chunks and all(isinstance(c, str) for c in chunks)
    assert answer.finish_reason in ("stop", "length")
    assert answer.usage.generated_tokens > 0
    assert answer.usage.session_tokens == info.tokens  # not persisted

    score = session.score(" the", per_token=True)
    assert score.logprob < 0 and score.scored_tokens == len(score.tokens) >= 1
    assert score.session_tokens == info.tokens
    session.delete()


def test_ingest_skips_segments_the_session_holds(client):
    session = client.create_session(raw=True)
    text = SAMPLE.read_text()
    first = session.ingest([text], segment_bytes=512)
    # The same document numbered from 1 again: everything is already there.
    again = session.ingest(iter([text]), segment_bytes=512, first_seq=1)
    assert again.skipped == first.segments and again.segments == 0
    assert session.refresh().tokens == first.session_tokens
    session.delete()


def test_stream_answer_text_and_stop(client):
    session = client.create_session(raw=True)
    session.ingest(["One, two, three, four, five, six, seven, eight,"])
    answer = session.ask("", max_tokens=24, stop=["eleven"])
    text = answer.text
    assert "eleven" not in text
    assert answer.finish_reason in ("stop", "length", "stop_string")
    session.delete()


def test_export_import_roundtrip(client):
    session = client.create_session(labels={"k": "v"})
    session.ingest(SAMPLE, segment_bytes=2048)
    blob = session.export()
    copy = client.import_session(blob, labels={"k": "copy"})
    assert copy.id != session.id
    assert copy.info.tokens == session.refresh().tokens
    assert copy.info.next_seq == session.info.next_seq
    assert copy.score(" and").logprob == pytest.approx(session.score(" and").logprob, abs=1e-4)
    ids = {s.id for s in client.list_sessions(label_selector={"k": "copy"})}
    assert ids == {copy.id}
    copy.delete()
    session.delete()
    with pytest.raises(longctx.LongctxError) as err:
        client.session(copy.id)
    assert err.value.code == grpc.StatusCode.NOT_FOUND


def test_auth_token(daemon_factory, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("secret-token-team-a-0123 team-a\n")
    # Plain-text tokens on loopback: the server refuses them without TLS unless
    # told that TLS ends beside it.
    d = daemon_factory([f"--auth_tokens_file={tokens}", "--allow_insecure_tokens=true"])
    with longctx.Client(d.target, token="secret-token-team-a-0123") as c:
        c.wait_until_serving()
        assert c.server_info().auth_required
        s = c.create_session()
        assert s.ingest(["hello there"]).segments == 1
    with longctx.Client(d.target) as anonymous:
        with pytest.raises(longctx.LongctxError) as err:
            anonymous.create_session()
        assert err.value.code == grpc.StatusCode.UNAUTHENTICATED
    with longctx.Client(d.target, token="wrong") as c:
        with pytest.raises(longctx.LongctxError) as err:
            c.session(s.id)
        assert err.value.code == grpc.StatusCode.UNAUTHENTICATED


def make_certificates(d):
    """A throw-away CA and, signed by it, a server certificate for 127.0.0.1
    and a client certificate (as tests/integration/operations_test.cc)."""
    def sh(cmd):
        subprocess.run(cmd, shell=True, cwd=d, check=True, capture_output=True)

    sh("openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 1 "
       "-subj /CN=longctx-test-ca")
    for who in ("server", "client"):
        sh(f"openssl req -newkey rsa:2048 -nodes -keyout {who}.key -out {who}.csr -subj /CN={who}")
        sh(f"printf 'subjectAltName=IP:127.0.0.1,DNS:localhost' > {who}.ext && openssl x509 -req "
           f"-in {who}.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -out {who}.pem "
           f"-extfile {who}.ext")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_mutual_tls(daemon_factory, tmp_path):
    make_certificates(tmp_path)
    trusted = {"root_certificates": tmp_path / "ca.pem",
               "certificate_chain": tmp_path / "client.pem",
               "private_key": (tmp_path / "client.key").read_bytes()}
    d = daemon_factory([f"--tls_cert={tmp_path / 'server.pem'}",
                        f"--tls_key={tmp_path / 'server.key'}",
                        f"--tls_client_ca={tmp_path / 'ca.pem'}"], **trusted)
    with longctx.Client(d.target, **trusted) as c:
        s = c.create_session()
        assert s.ingest(["over TLS"]).segments == 1
        s.delete()
    # The server's certificate checks out, but the client presents none.
    with longctx.Client(d.target, root_certificates=tmp_path / "ca.pem", timeout=5) as c:
        with pytest.raises(longctx.LongctxError):
            c.server_info()


def kill_and_restart_after(daemon, acks: int):
    """A progress callback that SIGKILLs the server at the `acks`th ack and
    starts it again on the same port from another thread (the client sees
    UNAVAILABLE while it comes back)."""
    state = {"n": 0, "restarter": None}

    def progress(p):
        state["n"] += 1
        if state["n"] == acks:
            daemon.kill()
            t = threading.Thread(target=daemon.start)
            t.start()
            state["restarter"] = t

    return progress, state


def restart_text() -> str:
    return SAMPLE.read_text()


def test_connection_drop_resumes_from_next_seq(client, daemon):
    reference = client.create_session(raw=True)
    want = reference.ingest([restart_text()], segment_bytes=256)
    proxy = CuttableProxy(daemon.target)
    try:
        with longctx.Client(proxy.target, retry=longctx.RetryPolicy(max_elapsed=30)) as c:
            session = c.create_session(raw=True)
            cuts = {"n": 0}

            def progress(p):
                cuts["n"] += 1
                if cuts["n"] in (3, 9):
                    proxy.cut()

            got = session.ingest([restart_text()], segment_bytes=256, window=4, progress=progress)
    finally:
        proxy.close()
    # Two cuts; a resent segment that was still in flight on the cut stream
    # and failed there answers ABORTED, which is retried too.
    assert got.reconnects >= 2
    # Only segments whose acks the cuts lost come back as duplicates.
    assert got.duplicates <= 2 * 4
    assert got.segments == want.segments and got.bytes == want.bytes
    info = client.session(session.id).info
    assert info.next_seq == want.acked_seq + 1
    assert info.tokens == client.session(reference.id).info.tokens
    client.delete_session(session.id)
    reference.delete()


def test_restart_without_durable_store_is_session_lost(daemon_factory):
    d = daemon_factory(["--durability=none"])
    with longctx.Client(d.target, retry=longctx.RetryPolicy(max_elapsed=60)) as c:
        c.wait_until_serving()
        session = c.create_session(raw=True)
        progress, state = kill_and_restart_after(d, 3)
        with pytest.raises(longctx.SessionLostError) as err:
            session.ingest([restart_text()], segment_bytes=256, window=2, progress=progress)
        state["restarter"].join()
        assert err.value.session_id == session.id
        assert err.value.acked_seq >= 3
        assert "restarted without a durable store" in str(err.value)


@pytest.mark.skipif("--state_dir" not in daemon_flags(),
                    reason="this longctxd has no durable session store (--state_dir)")
def test_restart_with_durable_store_resumes(daemon_factory, tmp_path):
    d = daemon_factory([f"--state_dir={tmp_path / 'state'}"])
    with longctx.Client(d.target, retry=longctx.RetryPolicy(max_elapsed=60)) as c:
        c.wait_until_serving()
        reference = c.create_session(raw=True)
        want = reference.ingest([restart_text()], segment_bytes=256)
        session = c.create_session(raw=True)
        progress, state = kill_and_restart_after(d, 3)
        got = session.ingest([restart_text()], segment_bytes=256, window=2, progress=progress)
        state["restarter"].join()
        assert got.reconnects >= 1
        info = session.refresh()
        assert info.next_seq == want.acked_seq + 1
        assert info.tokens == c.session(reference.id).info.tokens
        session.delete()
        reference.delete()


def test_wrong_replica_names_the_home(daemon_factory):
    """A session made on replica A, asked for on replica B: WrongReplicaError
    naming A (never SessionLostError or NOT_FOUND), and A still serves it."""
    a = daemon_factory(["--replica_id=py-a"])
    b = daemon_factory(["--replica_id=py-b"])
    with longctx.Client(a.target) as on_a, longctx.Client(b.target) as on_b:
        assert on_a.server_info().replica_id == "py-a"
        session = on_a.create_session()
        assert session.id.startswith("py-a.s-")
        session.ingest(["The keeper lights the lamp.\n\n"])
        with pytest.raises(longctx.WrongReplicaError) as got:
            on_b.session(session.id)
        assert got.value.home == "py-a"
        assert got.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert "py-a" in str(got.value)
        with pytest.raises(longctx.WrongReplicaError) as asked:
            longctx.Session(on_b, session.info).ask("Who?", max_tokens=2).text
        assert asked.value.home == "py-a"
        with pytest.raises(longctx.WrongReplicaError):
            longctx.Session(on_b, session.info).ingest(["More.\n\n"], first_seq=1)
        assert on_a.session(session.id).info.next_seq == 2
        session.delete()
