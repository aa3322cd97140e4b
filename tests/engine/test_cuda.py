"""On a CUDA GPU (skipped without one; `benchmarks/gpu_check.sh` runs them): AMP steps in bf16 and fp16, a real
out-of-memory error as one line, SyncBatchNorm, pinned memory, and a compiled training step.

Each test has a time limit (``@pytest.mark.cuda(timeout=...)``, else conftest's ``CUDA_TEST_SECONDS``), after which,
or on SIGTERM, every thread's stack is printed and the process ends; a failure is printed when it happens (conftest).
"""

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
from gmyolo.errors import TrainingDiverged
from gmyolo.models.yolo import DetectionModel
from gmyolo.tasks.detect.train import DetectionTrainer, TrainArgs, train

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
    """The training loss (the sum of its parts) of each epoch in ``results.csv``; none before the first epoch ends."""
    if not (run_dir / "results.csv").is_file():
        return []
    with open(run_dir / "results.csv", newline="") as f:
        return [sum(float(v) for k, v in row.items() if k.startswith("train/")) for row in csv.DictReader(f)]


class TrainingRecord:
    """What a training run did, for a failing test to say: the GradScaler's scale before the first optimizer step and
    after each (a step it skips, for an inf or NaN gradient, halves the scale), and the first module of the model
    trained whose output in a training forward pass was not finite. On the device, read back only by :meth:`said`."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.scales: list[float] = []
        self.finite: list[tuple[str, torch.Tensor]] = []  # (module, its output all finite), in call order
        self.names: dict[int, str] = {}  # the trained model's modules (not the EMA's copies, nor validation's)
        build_model, update = DetectionTrainer.build_model, torch.amp.GradScaler.update

        def recorded_build_model(trainer):
            model = build_model(trainer)
            self.names = {id(m): name or "model" for name, m in model.named_modules()}
            return model

        def recorded_update(scaler, new_scale=None):
            if scaler.is_enabled() and not self.scales:
                self.scales.append(scaler.get_scale())
            update(scaler, new_scale)
            if scaler.is_enabled():
                self.scales.append(scaler.get_scale())

        monkeypatch.setattr(DetectionTrainer, "build_model", recorded_build_model)
        monkeypatch.setattr(torch.amp.GradScaler, "update", recorded_update)

    def __enter__(self) -> TrainingRecord:
        self.hook = torch.nn.modules.module.register_module_forward_hook(self.check_output)
        return self

    def __exit__(self, *exc) -> None:
        self.hook.remove()

    def check_output(self, module, args, output) -> None:
        name = self.names.get(id(module))
        if name is None or not (module.training and torch.is_grad_enabled()) or len(self.finite) > 100_000:
            return
        outputs = output if isinstance(output, (list, tuple)) else [output]
        for t in outputs:
            if isinstance(t, torch.Tensor) and t.is_floating_point():
                self.finite.append((name, torch.isfinite(t).all()))

    def skipped_steps(self) -> list[int]:
        """The optimizer steps (1-based) the GradScaler skipped: those after which its scale fell."""
        return [i for i in range(1, len(self.scales)) if self.scales[i] < self.scales[i - 1]]

    def first_non_finite(self) -> str:
        if not self.finite:
            return "none (no training forward pass seen)"
        finite = torch.stack([f for _, f in self.finite]).cpu()
        if bool(finite.all()):
            return f"none in {len(finite)} module outputs"
        i = int((~finite).nonzero()[0])
        return f"{self.finite[i][0]} (call {i + 1} of {len(finite)})"

    def said(self, epoch_losses: list[float]) -> str:
        scaler = "no GradScaler"
        if self.scales:
            skipped = self.skipped_steps()
            scaler = (
                f"GradScaler skipped {len(skipped)} of {len(self.scales) - 1} steps"
                + (f" (steps {', '.join(map(str, skipped))})" if skipped else "")
                + f", scale {self.scales[0]:g} -> {self.scales[-1]:g}"
            )
        return (
            f"train loss per epoch {[round(v, 4) for v in epoch_losses]}; {scaler}; "
            f"first non-finite module output: {self.first_non_finite()}"
        )


@pytest.mark.cuda(timeout=120)
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_training_steps(synth, tmp_path, amp, monkeypatch):
    if amp == "bf16" and not bf16_supported(GPU):
        pytest.skip(f"{torch.cuda.get_device_name(GPU)} has no native bf16")
    precision = resolve_precision(amp, GPU)
    assert precision.scaled == (amp == "fp16")  # the GradScaler only for fp16
    run = tmp_path / "exp"
    with TrainingRecord(monkeypatch) as record:
        try:
            result = train(TrainArgs(data=synth, epochs=3, amp=amp, project=str(tmp_path), **RUN))
        except TrainingDiverged as e:
            pytest.fail(f"{amp}: {e}\n{amp}: {record.said(losses(run))}")
    values = losses(run)
    assert all(torch.isfinite(torch.tensor(values))) and values[-1] < values[0], f"{amp}: {record.said(values)}"
    ckpt = torch.load(result["last"], weights_only=True)
    for part in ("model", "ema"):  # checkpoints and the EMA stay fp32 under autocast
        other = {k: v.dtype for k, v in ckpt[part].items() if v.is_floating_point() and v.dtype != torch.float32}
        assert not other, f"{amp}: {part} tensors not in fp32: {other}"


def test_auto_amp_is_bf16_where_the_gpu_has_it():
    expected = torch.bfloat16 if bf16_supported(GPU) else torch.float16
    assert resolve_precision("auto", GPU).dtype == expected


@pytest.mark.cuda(timeout=90)
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


# Eager, then compiled: a cold Inductor compile of the four GMA block shapes, forward and backward, takes most of it
# (an H200's run was still going at 80 s). Inductor's compile workers are left as they are: they do not hold up a
# SIGTERM (conftest's handler ends this process; their sidecar sees its pipe close and ends them).
@pytest.mark.slow
@pytest.mark.cuda(timeout=240)
def test_compiled_training_on_the_gpu(synth, tmp_path):
    eager = train(TrainArgs(data=synth, epochs=1, project=str(tmp_path / "eager"), **RUN))
    compiled = train(TrainArgs(data=synth, epochs=1, compile=True, project=str(tmp_path / "compiled"), **RUN))
    a, b = losses(tmp_path / "eager/exp"), losses(tmp_path / "compiled/exp")
    assert b[0] == pytest.approx(a[0], rel=0.05)  # bf16/fp16 forward: the compiler's fusions differ a little
    assert compiled["epochs_trained"] == eager["epochs_trained"] == 1
