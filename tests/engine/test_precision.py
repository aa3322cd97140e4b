"""--amp and --compile on the CPU: choosing the precision, bf16 autocast training (the loss finite and falling,
weights, EMA and checkpoints fp32), and torch.compile giving eager's loss."""

from __future__ import annotations

import csv

import pytest
import torch

from gmyolo.data.synth import make_synthetic_dataset
from gmyolo.engine.options import amp_mode
from gmyolo.engine.precision import Precision, compile_backend, resolve_precision, to_float32
from gmyolo.models.yolo import DetectionModel
from gmyolo.tasks.detect.options import TrainArgs
from gmyolo.tasks.detect.train import train
from gmyolo.tools.bench import BenchArgs, Detector, synthetic_targets, train_step_fn

CPU = torch.device("cpu")
RUN = dict(
    model="yolov5n-gmf-nano", imgsz=64, batch=8, nbs=8, workers=0, device="cpu", plots=False, progress=False,
    tensorboard=False, noautoanchor=True,
)  # fmt: skip


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return str(make_synthetic_dataset(tmp_path_factory.mktemp("synth"), seed=0, n_train=16, n_val=8, imgsz=96))


def read_rows(path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_amp_modes_and_old_booleans():
    assert [amp_mode(v) for v in (True, False, None, "BF16", "fp16", "off", "auto")] == [
        "auto", "off", "auto", "bf16", "fp16", "off", "auto"
    ]  # fmt: skip
    with pytest.raises(ValueError, match="--amp must be one of auto, bf16, fp16, off"):
        amp_mode("int8")
    args = TrainArgs(amp=False)  # a run file of gmyolo < 0.2
    args.check()
    assert args.amp == "off"


def test_precision_on_the_cpu():
    assert resolve_precision("auto", CPU) == Precision("cpu")  # fp32: the quick start is unchanged
    assert not resolve_precision("off", CPU).enabled
    bf16 = resolve_precision("bf16", CPU)
    assert bf16.dtype == torch.bfloat16 and not bf16.scaled and not bf16.scaler().is_enabled()
    with pytest.raises(ValueError, match="--amp fp16 is for GPUs"):
        resolve_precision("fp16", CPU)
    with bf16.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    out = to_float32({"a": [torch.ones(1, dtype=torch.bfloat16)], "b": torch.ones(1, dtype=torch.long)})
    assert out["a"][0].dtype == torch.float32 and out["b"].dtype == torch.long


def test_bf16_autocast_steps_lower_the_loss():
    # The training step of `gmyolo bench` is the trainer's: forward under CPU bf16 autocast, loss in fp32.
    torch.manual_seed(0)
    args = BenchArgs(model="yolov5n-gmf-nano", imgsz=64, batch=4, amp="bf16")
    model = DetectionModel("yolov5n-gmf-nano")
    step, _, trained = train_step_fn(Detector(model), args, CPU, resolve_precision("bf16", CPU))
    g = torch.Generator().manual_seed(0)
    x, targets = torch.rand(4, 3, 64, 64, generator=g), synthetic_targets(4, model.nc, g)
    losses = [step(x, targets).item() for _ in range(8)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.9 * losses[0], losses
    assert all(p.dtype == torch.float32 for p in trained.parameters())  # autocast never changes the weights


def test_bf16_training_run_keeps_fp32_checkpoints(synth, tmp_path):
    result = train(TrainArgs(data=synth, epochs=2, amp="bf16", project=str(tmp_path), **RUN))
    rows = read_rows(tmp_path / "exp/results.csv")
    losses = [sum(float(r[f"train/{k}"]) for k in ("box_loss", "obj_loss", "cls_loss")) for r in rows]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    ckpt = torch.load(result["last"], weights_only=True)
    assert ckpt["args"]["amp"] == "bf16"
    for part in ("model", "ema"):
        floats = [v for v in ckpt[part].values() if v.is_floating_point()]
        assert floats and all(v.dtype == torch.float32 for v in floats), part


def test_compile_backend_leaves_exports_alone():
    class Exported:
        kind, device = "ONNX", CPU

    exported = Exported()
    assert compile_backend(exported, True) is exported and not hasattr(exported, "model")


TINY_YAML = """\
nc: 4
depth_multiple: 0.33
width_multiple: 0.25
anchors:
  - [10,13, 16,30, 33,23]
backbone:
  [[-1, 1, Conv, [64, 6, 2, 2]],
   [-1, 1, Conv, [128, 3, 2]],
   [-1, 1, Conv, [256, 3, 2]],
  ]
head:
  [[-1, 1, C3, [256]],
   [[3], 1, Detect, [nc, anchors]],
  ]
"""


@pytest.mark.slow
def test_compiled_training_gives_eager_loss(synth, tmp_path):
    # One epoch (2 steps) of a tiny detector, compiled and eager, from the same seed: the same losses up to
    # the compiler's reordering of float sums. (Inductor compiles the forward and backward on the CPU for
    # about a minute; the GPU check compiles the GroupMixFormer detector.)
    (tmp_path / "tiny.yaml").write_text(TINY_YAML)
    rows = {}
    from torch._dynamo.utils import counters

    for compile_ in (False, True):
        project = tmp_path / str(compile_)
        run = {**RUN, "model": str(tmp_path / "tiny.yaml"), "optimizer": "SGD"}
        counters.clear()
        train(TrainArgs(data=synth, epochs=1, compile=compile_, project=str(project), **run))
        assert (counters["stats"]["unique_graphs"] > 0) == compile_  # compiled for real, and only when asked
        rows[compile_] = read_rows(project / "exp/results.csv")[0]
    for key in ("train/box_loss", "train/obj_loss", "train/cls_loss", "val/box_loss", "val/obj_loss", "val/cls_loss"):
        assert float(rows[True][key]) == pytest.approx(float(rows[False][key]), rel=1e-3), key


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_regional_compile_of_gma_blocks_gives_eager_losses(mode):
    # --compile on a GroupMixFormer compiles its GMA blocks, not the network: blocks of one width share one graph
    # (here two blocks with different drop-path rates: the stage draws the drop-path factors, so the rates are not
    # baked into the graph), and training steps give eager's losses. The blocks in their batched form, as a GPU runs
    # them; on a CPU, reduce-overhead compiles as default does (CUDA graphs are CUDA's). About a minute each.
    from torch._dynamo.utils import counters

    from gmyolo.engine.precision import compile_model
    from gmyolo.models.groupmixformer import GroupMixFormer

    def model() -> GroupMixFormer:
        torch.manual_seed(0)
        m = GroupMixFormer(
            embedding_dims=(40, 80, 120, 160), serial_depths=(2, 1, 1, 1), features_only=True, out_indices=(0,),
            drop_path_rate=0.2,
        )  # fmt: skip
        m.set_block_form("batched")
        return m.train()

    def losses(m: torch.nn.Module) -> list[float]:
        opt = torch.optim.SGD(m.parameters(), lr=0.05)
        torch.manual_seed(1)  # the same images and drop-path draws for both
        out = []
        for _ in range(3):
            loss = m(torch.randn(2, 3, 64, 64))[0].square().mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
            out.append(loss.item())
        return out

    eager = losses(model())
    counters.clear()
    compiled = compile_model(model(), CPU, mode)
    assert isinstance(compiled, GroupMixFormer)  # compiled in place: the state dict keeps its names
    assert all(not k.startswith("_orig_mod") for k in compiled.state_dict())
    got = losses(compiled)
    assert counters["stats"]["unique_graphs"] == 1  # both blocks, one graph
    assert got == pytest.approx(eager, rel=1e-4), (got, eager)
