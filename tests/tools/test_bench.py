"""`gmyolo bench` machinery: interleaved timing, every section on small models, the report and its checks."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from gmyolo.tools.bench import (
    BenchArgs,
    balance,
    bench_train_step,
    build_subject,
    format_report,
    run_bench,
    summarize,
    time_interleaved,
)


def test_time_interleaved_warms_up_then_alternates():
    calls = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    times = time_interleaved(fns, repeats=2, warmup=1)
    assert calls == ["a", "b", "a", "b", "a", "b"]
    assert [len(v) for v in times.values()] == [2, 2] and all(t >= 0 for v in times.values() for t in v)


def test_summarize_median_spread_and_rate():
    s = summarize([0.3, 0.1, 0.2], images=4)
    assert s == pytest.approx({"median_ms": 200.0, "min_ms": 100.0, "max_ms": 300.0, "images_per_s": 20.0})


@pytest.mark.parametrize(
    "kwargs, message",
    [(dict(batch=0), "--batch"), (dict(repeats=0), "--repeats"), (dict(modes=["warp"]), "unknown --modes warp")],
)
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BenchArgs(**kwargs).check()


def test_backbone_modes_agree_and_ratios_come_from_one_run():
    args = BenchArgs(
        model="groupmixformer-m", imgsz=32, batch=2, threads=1, repeats=2, warmup=0,
        modes=["literal", "eager", "fused"], train=False,
    )  # fmt: skip
    report = run_bench(args)
    assert report["kind"] == "classifier" and report["params"] == 5_733_120
    assert report["environment"]["threads"] == 1
    rows = report["inference"]["rows"]
    assert [(r["mode"], r["batch"]) for r in rows] == [(m, b) for b in (1, 2) for m in ("literal", "eager", "fused")]
    for r in rows:
        assert r["max_abs_diff_vs_eager"] < 1e-4
        assert r["speedup_vs_eager"] == pytest.approx(
            next(e["median_ms"] for e in rows if e["mode"] == "eager" and e["batch"] == r["batch"]) / r["median_ms"]
        )
        assert "speedup_vs_literal" in r
    assert "literal" in format_report(report)


def test_detector_every_section():
    args = BenchArgs(model="yolov5n-gmf-nano", imgsz=64, batch=2, threads=1, repeats=1, warmup=0, workers=0)
    report = run_bench(args)
    inf = report["inference"]
    assert inf["imgsz"] == [64, 64]
    assert {r["mode"] for r in inf["rows"]} == {"eager", "fused", "channels-last", "onnx"}
    assert {"compile", "cuda-graph", "literal"} <= set(inf["skipped"])  # CPU defaults; not a GroupMixFormer
    assert inf["precision"] == report["precision"] == "fp32"  # --amp auto on a CPU
    assert all(r["max_abs_diff_vs_eager"] < 1e-3 for r in inf["rows"])  # decoded boxes are in pixels
    assert report["train"]["images_per_s"] > 0 and report["train"]["optimizer"] == "AdamW"
    p = report["predict"]
    assert p["total_ms"] >= p["inference_ms"] > 0 and 0 < p["model_share"] <= 1
    d = report["data"]
    assert d["loader"]["0"]["median"] > 0 and d["workers"] == 0 and d["images_per_s"] == d["loader"]["0"]["median"]
    assert d["training_fed_images_per_s"] > 0 and d["balance"]["bound"] in ("compute", "data")
    text = format_report(report)
    for part in ("channels-last", "training step", "predict end to end", "data pipeline", "-bound: the loader"):
        assert part in text


def test_data_bound_verdict():
    slow_loader = balance(train_rate=400.0, data_rate=250.0, fed_rate=240.0, workers=8)
    assert slow_loader["bound"] == "data" and slow_loader["data_over_train"] == pytest.approx(0.625)
    assert slow_loader["text"].startswith("data-bound: the loader (8 worker(s)) delivers 250.0 images/s")
    assert "fed by this loader: 240.0" in slow_loader["text"]
    assert balance(train_rate=7.5, data_rate=200.0, fed_rate=None, workers=2)["bound"] == "compute"


def test_default_workers_are_the_trainers():
    args = BenchArgs(model="yolov5n-gmf-nano", imgsz=64, batch=2, threads=1, repeats=1, warmup=0, train=False,
                     predict=False, modes=["fused"])  # fmt: skip
    report = run_bench(args)  # --workers not given: what `gmyolo train` would use (min(8, cores, batch))
    from gmyolo.data.dataset import default_workers

    assert report["data"]["workers"] == default_workers(2) and report["data"]["workers_default"]
    assert "(the default)" in format_report(report) and "balance" not in report["data"]  # no training step


def test_grad_checkpointing_keeps_fewer_activations():
    torch.set_num_threads(1)  # as run_bench does for threads=1 (this calls one of its parts directly)
    base = BenchArgs(model="groupmixformer-m", imgsz=64, batch=2, threads=1, repeats=1, warmup=0, features=True)
    subject = build_subject(base)
    plain = bench_train_step(subject, base, torch.device("cpu"))
    ckpt = bench_train_step(subject, dataclasses.replace(base, grad_checkpointing=True), torch.device("cpu"))
    assert ckpt["grad_checkpointing"] and not plain["grad_checkpointing"]
    assert ckpt["saved_activations_mb"] < 0.3 * plain["saved_activations_mb"]
