"""Start-up: the command line parses its arguments before importing torch, and ``import gmyolo`` loads only
what the API needs. Checked in fresh interpreters, by the modules they end up holding (no timings)."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "torchvision", "numpy", "cv2", "timm", "matplotlib", "onnx", "onnxruntime", "tensorboard", "yaml")


def loaded_after(code: str) -> set[str]:
    """The heavy top-level packages a fresh interpreter has imported after running ``code``."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return set(json.loads(out.splitlines()[-1])) & set(HEAVY)


@pytest.mark.parametrize("command", [[], ["train"], ["val"], ["predict"], ["export"], ["classify", "train"], ["bench"]])
def test_help_imports_no_torch(command):
    code = (
        "import contextlib, io\n"
        "from gmyolo.cli.main import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        f"    main({[*command, '--help']!r})"
    )
    assert loaded_after(code) == set()


def test_import_gmyolo_is_cheap_and_the_api_loads_only_what_it_needs():
    assert loaded_after("import gmyolo") == set()
    api = loaded_after("from gmyolo import YOLO, groupmixformer\nYOLO('yolov5n-gmf-nano')")
    assert {"torch", "yaml"} <= api
    assert not api & {"cv2", "timm", "matplotlib", "onnx", "onnxruntime", "tensorboard"}, api


def test_lazy_names_and_the_documented_import_paths():
    import gmyolo
    from gmyolo.models.yolo.registry import register_module
    from gmyolo.tasks.classify.options import ClassifyTrainArgs
    from gmyolo.tasks.detect.options import TrainArgs

    assert gmyolo.YOLO.__name__ == "YOLO" and "YOLO" in dir(gmyolo)
    assert ClassifyTrainArgs().model == "groupmixformer-t" and TrainArgs().model == "yolo11n-gmf-nano"
    assert callable(register_module)
    for gone in ("gmyolo.engine.loss", "gmyolo.engine.validator", "gmyolo.models.registry"):  # no re-export shims
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module(gone)
