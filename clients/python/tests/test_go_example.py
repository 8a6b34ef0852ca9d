"""examples/go/ingest (built by examples/go/build.sh; scripts/test.sh sets
$LONGCTX_GO_EXAMPLE) against the real server: the Go stubs of the proto work."""
import os
import subprocess

import pytest
from conftest import SAMPLE

GO_EXAMPLE = os.environ.get("LONGCTX_GO_EXAMPLE")


@pytest.mark.skipif(not GO_EXAMPLE, reason="LONGCTX_GO_EXAMPLE not set (examples/go/build.sh)")
def test_go_example_ingests_and_answers(daemon):
    out = subprocess.run([GO_EXAMPLE, f"--server={daemon.target}", f"--file={SAMPLE}",
                          "--segment-bytes=2048", "--max-tokens=8"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "acknowledged" in out.stderr
    assert "tokens generated" in out.stdout
