"""The official `openai` Python package against the real longctxd.

Starts longctxd (LONGCTX_DAEMON, default build/bin/longctxd) on the CPU
backend with the model of LONGCTX_MODEL, its OpenAI-compatible door on a free
loopback port and bearer tokens on, then talks to it only through the
package: models, chat completions whole and streamed, completions, the
session_id extension and errors. Run by scripts/test.sh:

    LONGCTX_MODEL=... python -m pytest -q tests/openai
"""

import os
import pathlib
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

import openai
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
TOKEN = "openai-compat-token-0001"


def _wait_serving(url, proc, log, timeout=300):
    """Polls /v1/models until the model is loaded (503 while starting)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"longctxd exited with {proc.returncode}:\n{log.read_text()}")
        try:
            req = urllib.request.Request(f"{url}/models",
                                         headers={"Authorization": f"Bearer {TOKEN}"})
            with urllib.request.urlopen(req, timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"longctxd did not serve within {timeout}s:\n{log.read_text()}")


@pytest.fixture(scope="session")
def server():
    model = os.environ.get("LONGCTX_MODEL")
    if not model:
        pytest.skip("LONGCTX_MODEL is not set")
    daemon = os.environ.get("LONGCTX_DAEMON", str(ROOT / "build" / "bin" / "longctxd"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        (tmp / "tokens").write_text(f"{TOKEN} openai-tests\n")
        log = tmp / "longctxd.log"
        args = [daemon, f"--model={model}", "--backend=cpu", "--listen=127.0.0.1:0",
                "--metrics_listen=", "--http_listen=127.0.0.1:0", f"--port_file={tmp}/ports",
                f"--auth_tokens_file={tmp}/tokens", "--allow_insecure_tokens=true",
                "--kv_cache_bytes=128MiB", f"--state_dir={tmp}/state"]
        with log.open("w") as out:
            proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 60
            while not (tmp / "ports").exists() and time.time() < deadline and proc.poll() is None:
                time.sleep(0.05)
            ports = dict(line.split("=") for line in (tmp / "ports").read_text().split())
            url = f"http://127.0.0.1:{ports['http']}/v1"
            _wait_serving(url, proc, log)
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=60)


@pytest.fixture(scope="session")
def client(server):
    return openai.OpenAI(base_url=server, api_key=TOKEN, max_retries=0)


@pytest.fixture(scope="session")
def model(client):
    return client.models.list().data[0].id


QUESTION = [{"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "What is the capital of France?"}]


def test_models_lists_the_served_model(client):
    models = client.models.list().data
    assert len(models) == 1
    assert models[0].id
    assert models[0].owned_by == "longctx"


def test_chat_completion(client, model):
    r = client.chat.completions.create(model=model, messages=QUESTION, max_tokens=16,
                                       temperature=0)
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.completion_tokens <= 16
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_completion_streamed_matches_whole(client, model):
    whole = client.chat.completions.create(model=model, messages=QUESTION, max_tokens=16,
                                           temperature=0)
    stream = client.chat.completions.create(model=model, messages=QUESTION, max_tokens=16,
                                            temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    text, finish, usage = "", None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    assert text == whole.choices[0].message.content  # greedy: the same answer
    assert finish == whole.choices[0].finish_reason
    assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens


def test_completions_whole_and_streamed(client, model):
    whole = client.completions.create(model=model, prompt="Once upon a time", max_tokens=8,
                                      temperature=0, seed=1)
    assert whole.object == "text_completion"
    assert whole.usage.completion_tokens == 8
    assert whole.choices[0].finish_reason == "length"
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=model, prompt="Once upon a time", max_tokens=8, temperature=0, seed=1,
        stream=True) if c.choices)
    assert streamed == whole.choices[0].text


def test_errors_map_to_the_package_exceptions(server, client, model):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=model, messages=QUESTION, n=2)
    assert "n: only 1" in str(e.value)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=QUESTION)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model=model, messages=QUESTION,
                                       extra_body={"session_id": "no-such-session"})
    stranger = openai.OpenAI(base_url=server, api_key="not-a-known-token-at-all", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        stranger.models.list()
