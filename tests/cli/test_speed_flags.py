"""The speed flags of the training commands: --workers (default: YOLOv5's number), --amp auto|bf16|fp16|off
(--no-amp = off), --compile; parsed before torch is imported."""

from __future__ import annotations

import pytest

from gmyolo.cli.common import args_as
from gmyolo.cli.main import build_parser, main
from gmyolo.tasks.classify.options import ClassifyTrainArgs
from gmyolo.tasks.detect.options import PredictArgs, TrainArgs, ValArgs
from gmyolo.tools.options import BenchArgs


@pytest.mark.parametrize(
    "argv, amp, compile_, workers",
    [
        ([], "auto", "off", None),
        (["--amp", "bf16", "--compile", "--workers", "4"], "bf16", "default", 4),
        (["--amp", "fp16", "--compile", "reduce-overhead"], "fp16", "reduce-overhead", None),
        (["--no-amp"], "off", "off", None),
    ],
)
def test_train_flags(argv, amp, compile_, workers):
    for command, cls in ((["train"], TrainArgs), (["classify", "train", "--data", "d"], ClassifyTrainArgs)):
        parsed = args_as(cls, build_parser().parse_args([*command, *argv]))
        assert (parsed.amp, parsed.compile, parsed.workers) == (amp, compile_, workers)


def test_inference_and_bench_flags():
    parser = build_parser()
    val = args_as(ValArgs, parser.parse_args(["val", "--compile"]))
    predict = args_as(PredictArgs, parser.parse_args(["predict", "--source", "x.jpg", "--compile"]))
    assert val.compile == predict.compile == "default" and val.workers is None
    bench = args_as(BenchArgs, parser.parse_args(["bench", "--amp", "off", "--compile", "--infer-batch", "32"]))
    assert (bench.amp, bench.compile, bench.infer_batch, bench.workers) == ("off", "default", 32, None)
    assert args_as(ValArgs, parser.parse_args(["val"])).compile == "off"


def test_compile_modes_and_old_run_files():
    from gmyolo.engine.options import compile_mode

    assert [compile_mode(v) for v in (True, False, None, "max-autotune")] == ["default", "off", "off", "max-autotune"]
    args = TrainArgs(compile=True)  # a run file of an earlier version
    args.check()
    assert args.compile == "default"
    with pytest.raises(ValueError, match="--compile must be one of off, default, reduce-overhead, max-autotune"):
        TrainArgs(compile="fast").check()


def test_bad_compile_mode_is_refused(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--compile", "fastest"])
    assert "invalid choice: 'fastest'" in capsys.readouterr().err


def test_bad_amp_is_refused(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--amp", "int8"])
    assert "invalid choice: 'int8'" in capsys.readouterr().err
