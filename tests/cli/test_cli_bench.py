"""`gmyolo bench`: JSON for scripts, a table for people, one-line errors."""

from __future__ import annotations

import json

from gmyolo.cli.main import main

QUICK = ["--imgsz", "32", "--batch", "2", "--repeats", "1", "--warmup", "0", "--threads", "1", "--no-train"]


def test_json_and_table(capsys):
    assert main(["bench", "--model", "groupmixformer-m", *QUICK, "--modes", "eager", "fused", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["macs"] > 0 and report["environment"]["threads"] == 1
    assert {(r["mode"], r["batch"]) for r in report["inference"]["rows"]} == {
        ("eager", 1), ("fused", 1), ("eager", 2), ("fused", 2)
    }  # fmt: skip
    assert main(["bench", "--model", "groupmixformer-m", *QUICK, "--modes", "fused"]) == 0
    out = capsys.readouterr().out
    assert "groupmixformer-m (classifier): 5,733,120 parameters" in out and "1 thread(s)" in out


def test_errors_are_one_line(capsys):
    assert main(["bench", "--model", "groupmixformer-m", "--batch", "0"]) == 2
    assert "gmyolo bench: error: --batch must be a positive integer, got 0" in capsys.readouterr().err
    assert main(["bench", "--model", "no-such-model.yaml", *QUICK]) == 2
    assert "gmyolo bench: error: model config not found: no-such-model.yaml" in capsys.readouterr().err
