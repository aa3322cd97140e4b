"""On a CUDA GPU (skipped without one; `benchmarks/gpu_check.sh` runs them): AMP steps in bf16 and fp16, a real
out-of-memory error as one line, SyncBatchNorm, pinned memory, and a compiled training step."""

from __future__ import annotations

import csv
import socket

import pytest
import torch
import torch.distributed as dist

from gmyolo.cli.main import main
from gmyolo.data.config import load_dataset_config
from gmyolo.data.dataset import build_dataloader, create_dataset
from gmyolo.data.synth import make_synthetic_dataset
from gmyolo.engine.distributed import wrap_model
from gmyolo.engine.precision import bf16_supported, resolve_precision
from gmyolo.models.yolo import DetectionModel
from gmyolo.tasks.detect.train import TrainArgs, train

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (benchmarks/gpu_check.sh runs these)"),
]
GPU = torch.device("cuda:0")
RUN = dict(
    model="yolov5n-gmf-nano", imgsz=128, batch=16, nbs=16, workers=2, device="0", plots=False, progress=False,
    tensorboard=False, noautoanchor=True,
)  # fmt: skip


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return str(make_synthetic_dataset(tmp_path_factory.mktemp("synth"), seed=0, n_train=64, n_val=16, imgsz=128))


def losses(run_dir) -> list[float]:
    with open(run_dir / "results.csv", newline="") as f:
        return [sum(float(v) for k, v in row.items() if k.startswith("train/")) for row in csv.DictReader(f)]


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_training_steps(synth, tmp_path, amp):
    if amp == "bf16" and not bf16_supported(GPU):
        pytest.skip(f"{torch.cuda.get_device_name(GPU)} has no native bf16")
    precision = resolve_precision(amp, GPU)
    assert precision.scaled == (amp == "fp16")  # the GradScaler only for fp16
    result = train(TrainArgs(data=synth, epochs=3, amp=amp, project=str(tmp_path), **RUN))
    run = tmp_path / "exp"
    values = losses(run)
    assert all(torch.isfinite(torch.tensor(values))) and values[-1] < values[0], values
    ckpt = torch.load(result["last"], weights_only=True)
    for part in ("model", "ema"):  # checkpoints and the EMA stay fp32 under autocast
        assert all(v.dtype == torch.float32 for v in ckpt[part].values() if v.is_floating_point()), part


def test_auto_amp_is_bf16_where_the_gpu_has_it():
    expected = torch.bfloat16 if bf16_supported(GPU) else torch.float16
    assert resolve_precision("auto", GPU).dtype == expected


def test_real_out_of_memory_is_one_line(synth, tmp_path, capsys):
    # Cap this process at 2% of the GPU (about 2.8 GB of an H200), then train yolov5s at 640 on a batch of 64
    # (over 10 GB of activations): the allocator's own error, inside the forward pass.
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(0.02, GPU)
    try:
        argv = ["train", "--data", synth, "--epochs", "1", "--project", str(tmp_path), "--model", "yolov5s",
                "--imgsz", "640", "--batch", "64", "--workers", "0", "--device", "0", "--no-plots",
                "--no-tensorboard", "--noautoanchor"]  # fmt: skip
        assert main(argv) == 2
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, GPU)
        torch.cuda.empty_cache()
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("gmyolo")]
    assert len(err) == 1 and err[0].startswith("gmyolo train: error: out of memory on cuda:0 with --batch 64"), err


def test_sync_batchnorm_builds_and_steps(monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    torch.cuda.set_device(GPU)
    dist.init_process_group("nccl", rank=0, world_size=1)
    try:
        model = DetectionModel("yolov5n").to(GPU).train()
        ddp = wrap_model(model, GPU, sync_bn=True)
        assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())
        assert not any(type(m) is torch.nn.BatchNorm2d for m in model.modules())
        out = ddp(torch.rand(2, 3, 128, 128, device=GPU))
        sum(o.float().mean() for o in out).backward()
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    finally:
        dist.destroy_process_group()


def test_pinned_memory_batches(synth):
    ds, _ = create_dataset(load_dataset_config(synth), "train", 128, augment=True)
    loader = build_dataloader(ds, batch_size=8, workers=2, pin_memory=True)
    images, targets, _, _ = next(iter(loader))
    assert loader.pin_memory and images.is_pinned() and targets.is_pinned()
    assert images.to(GPU, non_blocking=True).device == GPU


@pytest.mark.slow
def test_compiled_training_on_the_gpu(synth, tmp_path):
    eager = train(TrainArgs(data=synth, epochs=1, project=str(tmp_path / "eager"), **RUN))
    compiled = train(TrainArgs(data=synth, epochs=1, compile=True, project=str(tmp_path / "compiled"), **RUN))
    a, b = losses(tmp_path / "eager/exp"), losses(tmp_path / "compiled/exp")
    assert b[0] == pytest.approx(a[0], rel=0.05)  # bf16/fp16 forward: the compiler's fusions differ a little
    assert compiled["epochs_trained"] == eager["epochs_trained"] == 1
