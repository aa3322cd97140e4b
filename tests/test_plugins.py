"""Plugins: a module of the user's own, registered from a file, reaches every process that builds the model.

In this process: ``--plugin`` files and the ``gmyolo.modules`` entry points are imported before a model is built, a
YAML's ``plugins:`` key (relative to the YAML) too, but never a checkpoint's; a module nobody registered is a
one-line error that says how to provide it. In fresh processes: trained on 2 gloo ranks as ``--device 0,1`` starts
them (torchrun workers that know only the file), then ``gmyolo val`` and ``gmyolo predict`` of the checkpoint
with ``--plugin``, and the error without it.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from gmyolo import plugins
from gmyolo.cli.main import main
from gmyolo.data.synth import make_synthetic_dataset
from gmyolo.models.yolo import MODULES, DetectionModel, ModelConfigError
from gmyolo.tasks.detect.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint

BLOCK = "PluginTestBlock"
PLUGIN = f'''
"""A block of the user's own: a residual 3x3 conv (B×C×H×W -> B×C2×H×W)."""
from torch import nn

from gmyolo.models.yolo.common import Conv
from gmyolo.models.yolo.registry import register_module


class {BLOCK}(nn.Module):
    def __init__(self, c1: int, c2: int):
        super().__init__()
        self.cv = Conv(c1, c2, 3, 1)

    def forward(self, x):
        return x + self.cv(x) if x.shape[1] == self.cv.conv.out_channels else self.cv(x)


register_module("{BLOCK}", {BLOCK})
'''
# A small anchor-free detector with the block in its backbone (P3/8, P4/16, P5/32 into Detect).
MODEL = f"""
nc: 2
backbone:
  - [-1, 1, Conv, [16, 3, 2]]  # 0: /2
  - [-1, 1, Conv, [32, 3, 2]]  # 1: /4
  - [-1, 1, {BLOCK}, [32]]  # 2: the plugin's block
  - [-1, 1, Conv, [32, 3, 2]]  # 3: /8
  - [-1, 1, Conv, [64, 3, 2]]  # 4: /16
  - [-1, 1, Conv, [64, 3, 2]]  # 5: /32
head:
  - [[3, 4, 5], 1, Detect, [nc]]
"""


@pytest.fixture
def fresh_plugins(monkeypatch):
    """No plugin loaded, no GMYOLO_PLUGINS; afterwards the registry and the environment are as they were."""
    monkeypatch.setattr(plugins, "_loaded", {})
    monkeypatch.setattr(plugins, "_entry_points_loaded", True)  # this environment's own are not the test's
    monkeypatch.setenv(plugins.ENV_VAR, "")
    monkeypatch.delenv(plugins.ENV_VAR)
    before = set(MODULES)
    yield
    for name in set(MODULES) - before:
        del MODULES[name]
    for name in [m for m in sys.modules if m.startswith("gmyolo_plugin_")]:
        del sys.modules[name]


@pytest.fixture
def files(tmp_path) -> tuple[Path, Path]:
    plugin, model = tmp_path / "my_blocks.py", tmp_path / "my_model.yaml"
    plugin.write_text(PLUGIN)
    model.write_text(MODEL)
    return plugin, model


def test_a_plugin_file_registers_its_blocks_once_and_is_passed_on(fresh_plugins, files):
    plugin, model = files
    with pytest.raises(ModelConfigError) as e:
        DetectionModel(str(model))
    message = str(e.value)
    assert "\n" not in message and f"line 6 (backbone entry 2, layer 2): unknown module '{BLOCK}'" in message
    assert "--plugin FILE.py" in message and "'plugins: [FILE.py]'" in message and "'gmyolo.modules'" in message
    first = plugins.load_plugin_file(plugin)
    assert plugins.load_plugin_file(plugin) is first and BLOCK in MODULES
    assert os.environ[plugins.ENV_VAR] == str(plugin.resolve())  # for the processes started from now on
    assert type(DetectionModel(str(model)).model[2]).__name__ == BLOCK


def test_the_yaml_plugins_key_loads_its_files_but_a_checkpoint_never_does(fresh_plugins, files, tmp_path, monkeypatch):
    plugin, model = files
    model.write_text("plugins: [my_blocks.py]  # relative to this file\n" + MODEL)
    monkeypatch.chdir(tmp_path.parent)  # not the YAML's folder
    built = DetectionModel(str(model))
    assert type(built.model[2]).__name__ == BLOCK and plugins.loaded_plugins() == [str(plugin.resolve())]
    save_checkpoint(tmp_path / "best.pt", built)
    ckpt = load_checkpoint(tmp_path / "best.pt")
    assert ckpt["model_yaml"]["plugins"] == ["my_blocks.py"]  # the checkpoint says what it needs
    del MODULES[BLOCK]  # a fresh process: nothing registered, nothing passed on by a parent
    plugins._loaded.clear()
    monkeypatch.delenv(plugins.ENV_VAR)
    with pytest.raises(ModelConfigError) as e:
        model_from_checkpoint(ckpt)
    assert BLOCK not in MODULES  # the checkpoint named the file; it was not run
    assert "\n" not in str(e.value) and f"unknown module '{BLOCK}'" in str(e.value)
    assert f"names the plugin file(s) {plugin}" in str(e.value) and "pass them with --plugin" in str(e.value)
    plugins.load_plugins([plugin])
    assert type(model_from_checkpoint(ckpt).model[2]).__name__ == BLOCK
    model.write_text("plugins: [missing.py]\n" + MODEL)
    with pytest.raises(ModelConfigError, match=r"my_model.yaml line 1: plugin missing.py: plugin file not found"):
        DetectionModel(str(model))


def test_installed_entry_points_are_imported_before_a_model_is_built(fresh_plugins, files, tmp_path, monkeypatch):
    package = tmp_path / "site"
    package.mkdir()
    (package / "gmyolo_test_entry_point_blocks.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(package))
    found = [importlib.metadata.EntryPoint("blocks", "gmyolo_test_entry_point_blocks", plugins.ENTRY_POINT_GROUP)]
    monkeypatch.setattr(
        plugins.importlib.metadata, "entry_points", lambda group: found if group == plugins.ENTRY_POINT_GROUP else []
    )
    monkeypatch.setattr(plugins, "_entry_points_loaded", False)
    try:
        assert type(DetectionModel(str(files[1])).model[2]).__name__ == BLOCK
    finally:
        sys.modules.pop("gmyolo_test_entry_point_blocks", None)


def test_cli_plugin_option(fresh_plugins, files, capsys):
    plugin, model = files
    assert main(["info", "--model", str(model), "--imgsz", "64", "--plugin", str(plugin)]) == 0
    assert BLOCK in capsys.readouterr().out
    assert main(["info", "--model", str(model), "--plugin", "missing.py"]) == 2
    assert capsys.readouterr().err.strip() == "gmyolo info: error: plugin file not found: missing.py"


def run(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """A fresh interpreter with nothing inherited: no GMYOLO_PLUGINS, one thread."""
    env = {k: v for k, v in os.environ.items() if k != plugins.ENV_VAR}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


# What `gmyolo train --plugin my_blocks.py --device 0,1` does after loading the plugin, with 2 CPU processes
# (this machine has no GPUs to name): torchrun, whose workers are fresh interpreters that only get the file's path.
LAUNCH = """
import json, sys
from gmyolo.engine.distributed import launch
from gmyolo.plugins import load_plugins
from gmyolo.tasks.detect.train import DetectionTrainer, TrainArgs
load_plugins([sys.argv[1]])
args = TrainArgs(data=sys.argv[2], model=sys.argv[3], project=sys.argv[4], epochs=1, imgsz=64, batch=4, nbs=4,
                 workers=0, device="cpu", optimizer="SGD", noautoanchor=True, plots=False, tensorboard=False,
                 progress=False)
print(json.dumps(launch(args, DetectionTrainer, nproc=2)))
"""


# ~23 s on 2 idle CPU cores (85 s on busy ones): 6 fresh interpreters (torchrun, 2 ranks, val, predict, the error).
def test_a_plugin_block_trains_on_two_ranks_then_val_and_predict_load_it_in_fresh_processes(files, tmp_path):
    plugin, model = files
    data = make_synthetic_dataset(tmp_path / "synth", seed=0, n_train=8, n_val=4, imgsz=64)
    train = run(["-c", textwrap.dedent(LAUNCH), str(plugin), str(data), str(model), str(tmp_path / "runs")], tmp_path)
    assert train.returncode == 0, train.stderr[-3000:]
    assert "DDP: 2 processes (gloo backend)" in train.stderr
    result = json.loads(train.stdout.strip().splitlines()[-1])
    best = Path(result["save_dir"]) / "weights" / "best.pt"
    assert torch.load(best, weights_only=True)["model_yaml"]["backbone"][2][2] == BLOCK

    common = ["--weights", str(best), "--device", "cpu", "--workers", "0", "--plugin", str(plugin)]
    val = run(
        ["-m", "gmyolo", "val", *common, "--batch", "4", "--project", str(tmp_path / "val"), "--no-plots"], tmp_path
    )
    assert val.returncode == 0, val.stderr[-3000:]
    assert "mAP50-95" in val.stdout
    images = Path(data).parent / "images" / "val"
    predict = run(["-m", "gmyolo", "predict", *common[:4], *common[6:], "--source", str(images),
                   "--project", str(tmp_path / "predict")], tmp_path)  # fmt: skip
    assert predict.returncode == 0, predict.stderr[-3000:]
    assert len(list((tmp_path / "predict" / "exp").glob("*.png"))) == 4

    missing = run(["-m", "gmyolo", "val", *common[:6], "--project", str(tmp_path / "val")], tmp_path)
    assert missing.returncode == 2
    error = missing.stderr.strip().splitlines()
    assert len(error) == 1 and error[0].startswith(f"gmyolo val: error: {best}: model config")
    assert f"unknown module '{BLOCK}'" in error[0] and "--plugin FILE.py" in error[0]
