"""Tests of tools/bench/perf_json.py (unittest, standard library only).

  python3 -m unittest discover -s tools/bench -p 'test_*.py'

The first case reads the outputs of a real GPU run kept in docs/gpu-logs (the
formats before the baselines were timed as medians: the parser reads both);
the second the current formats, in testdata/prefill_compare: lc_default.md and
attn_d64.md are outputs of longctx-bench and longctx-attention-bench on the
CPU backend (the default model at 512 and 1024 tokens; attention at 512);
hf_default.md and sdpa_d64.md are written by hand, with round numbers, in the
formats of hf_transformers_bench.py and attention_sdpa.py (they need a GPU).
"""
import contextlib
import io
import json
import os
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

import perf_json  # noqa: E402

H200_RUN = os.path.join(ROOT, "docs", "gpu-logs", "2026-11-22-h200-wgmma")
CURRENT = os.path.join(HERE, "testdata", "prefill_compare")


def find(rows, **keys):
    hits = [r for r in rows if all(r[k] == v for k, v in keys.items())]
    if len(hits) != 1:
        raise AssertionError(f"{len(hits)} rows match {keys}")
    return hits[0]


class GpuLogTest(unittest.TestCase):
    """docs/gpu-logs/2026-11-22-h200-wgmma: default.md, 7b.md, hf.md and
    attention_bench.md (longctx-attention-bench and SDPA in one file)."""

    @classmethod
    def setUpClass(cls):
        cls.rows, cls.software = perf_json.collect(H200_RUN)

    def test_attention_ratios_match_the_published_table(self):
        # docs/benchmarks.md, "Prefill, TFLOP/s": DCA / flash 1.02, 1.06, 1.23 at D 128.
        for T, ratio in ((8192, 1.02), (32768, 1.06), (131072, 1.23)):
            r = find(self.rows, bench="attention_prefill_dca", head_dim=128, tokens=T,
                     baseline_name="PyTorch SDPA flash")
            self.assertAlmostEqual(r["ratio"], ratio, places=2)
        r = find(self.rows, bench="attention_prefill_dca", head_dim=64, tokens=131072,
                 baseline_name="PyTorch SDPA cuDNN")
        self.assertEqual((r["longctx"], r["baseline"], r["ratio"]), (373.8, 453.6, 0.8241))
        self.assertEqual((r["heads"], r["model"]), (9, "attention, 9 q / 3 kv heads"))

    def test_mma_sync_runs_are_not_the_longctx_side(self):
        r = find(self.rows, bench="attention_prefill_rope", head_dim=128, tokens=8192,
                 baseline_name="PyTorch SDPA flash")
        self.assertEqual(r["longctx"], 353.2)  # wgmma, not mma.sync's 220.3

    def test_end_to_end_rows(self):
        r = find(self.rows, bench="prefill", heads=9, tokens=8192)
        self.assertEqual((r["longctx"], r["baseline"], r["ratio"]), (327973.7, 102917.3, 3.1868))
        # transformers could not load the GGUF file there, and the row says so.
        self.assertIn("random weights", r["baseline_name"])
        r = find(self.rows, bench="prefill", heads=32, tokens=32768)
        self.assertEqual((r["longctx"], r["baseline"]), (19804.0, 22605.0))
        self.assertEqual(r["baseline_name"], perf_json.HF_NAME)
        # Batch-1 decode with step graphs on (662.0), not off (456.5).
        r = find(self.rows, bench="decode", heads=9, tokens=8192)
        self.assertEqual((r["longctx"], r["baseline"]), (662.0, 11.8))

    def test_a_side_that_did_not_run_is_null(self):
        r = find(self.rows, bench="prefill", heads=32, tokens=4096)  # longctx only
        self.assertEqual((r["longctx"], r["baseline"], r["ratio"]), (32413.2, None, None))

    def test_other_kernels_have_rows_of_their_own(self):
        r = find(self.rows, bench="attention_prefill_rope_mma_sync", heads=32, tokens=8192,
                 baseline_name="PyTorch SDPA flash")
        self.assertEqual(r["longctx"], 220.3)

    def test_every_row_has_the_schema(self):
        # 38 of the default kernels, 24 of the mma.sync kernel.
        self.assertEqual(len(self.rows), 62)
        for r in self.rows:
            self.assertEqual(tuple(r), perf_json.ROW_KEYS)
            self.assertEqual(r["batch"], 1)
        self.assertEqual(self.software["cudnn"], "91900")


class CurrentFormatTest(unittest.TestCase):
    """testdata/prefill_compare: the files of run_prefill_compare.sh, in the
    formats of this commit."""

    def test_medians_and_json_file(self):
        with tempfile.TemporaryDirectory() as tmp:
            for name in os.listdir(CURRENT):
                with open(os.path.join(CURRENT, name)) as src, \
                        open(os.path.join(tmp, name), "w") as dst:
                    dst.write(src.read())
            args = [tmp, "--device", "NVIDIA H100 80GB HBM3", "--driver", "1.0", "--commit", "abc",
                    "--date", "2026-12-07T10:00:00+00:00"]
            with contextlib.redirect_stdout(io.StringIO()):
                rc = perf_json.main(args)
            self.assertEqual(rc, 0)
            with open(os.path.join(tmp, "2026-12-07-h100-prefill.json")) as f:
                doc = json.load(f)
        self.assertEqual([doc[k] for k in ("device", "driver", "commit", "date")],
                         ["NVIDIA H100 80GB HBM3", "1.0", "abc", "2026-12-07T10:00:00+00:00"])
        rows = doc["rows"]
        lc = {r["tokens"]: r["longctx"] for r in rows if r["bench"] == "prefill"}
        self.assertEqual(lc, LC_PREFILL)
        r = find(rows, bench="prefill", tokens=512)
        self.assertEqual((r["baseline"], r["baseline_name"]), (2000.0, perf_json.HF_NAME))
        self.assertEqual(r["ratio"], round(LC_PREFILL[512] / 2000.0, 4))
        r = find(rows, bench="decode", tokens=1024)
        self.assertEqual((r["longctx"], r["baseline"], r["ratio"]), (44.7, 100.0, 0.447))
        r = find(rows, bench="attention_prefill_dca", tokens=512,
                 baseline_name="PyTorch SDPA cuDNN (K/V repeated)")
        self.assertEqual((r["longctx"], r["baseline"]), (ATTN_DCA_512, 4.0))
        self.assertEqual((r["heads"], r["head_dim"]), (9, 64))
        self.assertEqual(len(rows), 4 + 4)  # prefill and decode at 2 lengths; 2 modes x 2 SDPA
        self.assertEqual(doc["software"], {"torch": "0.0", "transformers": "0.0", "cudnn": "0"})

    def test_device_slug(self):
        self.assertEqual(perf_json.device_slug("NVIDIA H100 80GB HBM3"), "h100")
        self.assertEqual(perf_json.device_slug("NVIDIA H200"), "h200")
        self.assertEqual(perf_json.device_slug("NVIDIA GH200 480GB"), "gh200")


class SyntheticShapeTest(unittest.TestCase):
    """docs/gpu-logs/2026-12-08-h100-prefill: longctx-bench on the synthetic
    SmolLM2-135M shape (lc_new.md) against transformers on the same shape with
    random weights (hf.md, model key smollm2-135m)."""

    def test_pairs_with_the_same_shape(self):
        run = os.path.join(ROOT, "docs", "gpu-logs", "2026-12-08-h100-prefill")
        with tempfile.TemporaryDirectory() as d:
            for name in ("lc_new.md", "hf.md"):
                with open(os.path.join(run, name), encoding="utf-8") as src, \
                        open(os.path.join(d, name), "w", encoding="utf-8") as dst:
                    dst.write(src.read())
            rows, _ = perf_json.collect(d)
        r = find(rows, bench="prefill", tokens=32768)
        self.assertEqual(r["model"], "SmolLM2-135M shape (synthetic, random weights)")
        self.assertEqual(r["longctx"], 188053.6)
        self.assertEqual(r["baseline"], 247221.4)
        self.assertEqual(r["baseline_name"], perf_json.HF_NAME)


# The longctx values of testdata/prefill_compare/lc_default.md and attn_d64.md.
LC_PREFILL = {512: 891.0, 1024: 846.2}
ATTN_DCA_512 = 0.3

if __name__ == "__main__":
    unittest.main()
