"""The Python API in one object: ``YOLO(cfg_or_weights)`` with ``info``, ``train``, ``val``, ``predict``, ``export``.

```python
from gmyolo import YOLO
model = YOLO("yolo11n-gmf-nano")                # a packaged model YAML, a path to one, or a checkpoint (.pt)
model.train(data="synth", epochs=25)            # same options as `gmyolo train`; then holds best.pt
metrics = model.val()                           # P, R, mAP50, mAP50-95 of that checkpoint
for r in model.predict("images/"):              # Results per image: boxes, scores, classes, names
    print(r.path, r.summary())
    r.save(f"out/{r.path.split('/')[-1]}")      # the image with its boxes drawn
onnx_file = model.export(format="onnx")         # checked against PyTorch with onnxruntime
YOLO(onnx_file).predict("images/")              # the same predictions from the ONNX file
```
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .models.summary import count_macs, count_parameters
from .models.yolo import DetectionModel
from .tasks.detect.backends import ONNX_SUFFIXES, TORCHSCRIPT_SUFFIXES, Backend, load_backend
from .tasks.detect.checkpoint import load_checkpoint, model_from_checkpoint
from .tasks.detect.options import ExportArgs, PredictArgs, TrainArgs, ValArgs

if TYPE_CHECKING:
    from .tasks.detect.results import Results

__all__ = ["YOLO", "Results"]

EXPORTED_SUFFIXES = ONNX_SUFFIXES + TORCHSCRIPT_SUFFIXES  # predict and val run them; what each command needs
# beyond PyTorch (OpenCV, ONNX Runtime, matplotlib) is imported when it runs


class YOLO:
    """A detector from a model YAML (untrained), a gmyolo checkpoint (trained), or an exported .onnx/.torchscript.

    An exported file can ``predict`` and ``val``; training, ``info`` and ``export`` need a YAML or a checkpoint.
    """

    def __init__(self, model: str | os.PathLike = "yolo11n-gmf-nano", nc: int | None = None):
        self.weights: str | None = None
        self.cfg: str | None = None
        self.exported: Backend | None = None
        self.train_args: dict[str, Any] = {}
        self.model: DetectionModel | None = None
        self._cached: Backend | None = None
        suffix = Path(str(model)).suffix.lower()
        if suffix in EXPORTED_SUFFIXES:
            self.weights = str(model)
            self.exported = load_backend(model, "cpu")
        elif suffix in (".pt", ".pth"):
            self.weights = str(model)
            ckpt = load_checkpoint(model)
            self.model = model_from_checkpoint(ckpt)
            self.train_args = ckpt.get("args", {})
        else:
            self.cfg = str(model)
            self.model = DetectionModel(model, nc=nc)

    @property
    def names(self) -> dict[int, str]:
        return self.exported.names if self.exported else self.model.names

    def _torch_model(self, what: str) -> DetectionModel:
        if self.model is None:
            raise ValueError(f"{what} needs a model YAML or a .pt checkpoint, not an exported {self.weights}")
        return self.model

    def info(self, imgsz: int = 640) -> dict[str, Any]:
        """Parameters, GFLOPs at ``imgsz`` and the layer table (as ``gmyolo info`` prints it)."""
        model = self._torch_model("info")
        macs = count_macs(model, (imgsz, imgsz))
        return {
            "params": count_parameters(model),
            "gflops": 2 * macs / 1e9,
            "strides": [int(s) for s in model.stride.tolist()],
            "layers": [dataclasses.asdict(r) for r in model.layer_rows],
        }

    def train(self, data: str = "synth", **kwargs: Any) -> dict[str, Any]:
        """Train (options as `gmyolo train`); afterwards this object holds the best checkpoint."""
        self._torch_model("train")
        if self.weights and "weights" not in kwargs:
            kwargs.setdefault("model", self.train_args.get("model", "yolo11n-gmf-nano"))
            kwargs["weights"] = self.weights
        else:
            kwargs.setdefault("model", self.cfg)
        from .tasks import trainer_for

        options = TrainArgs(data=data, **kwargs)
        results = trainer_for(options)(options).train()
        self.__init__(results["best"])
        return results

    def val(self, data: str | None = None, **kwargs: Any) -> dict[str, Any]:
        """Evaluate these weights — a checkpoint or an exported file (options as `gmyolo val`)."""
        if not self.weights:
            raise ValueError("val needs trained weights: YOLO('path/to/best.pt'), or call train() first")
        from .tasks.detect.val import run_val

        return run_val(ValArgs(weights=self.weights, data=data, **kwargs))

    def predict(
        self, source: Any, stream: bool = False, save: bool = False, verbose: bool = False, **kwargs: Any
    ) -> list[Results] | Iterator[Results]:
        """Detections for ``source`` (a path, folder, glob, list file, video, BGR array or list of them).

        Options as `gmyolo predict` (conf, iou, imgsz, classes, max_det, device, save_txt, save_json, project,
        name, ...). Nothing is written unless ``save``/``save_txt``/``save_json`` is set. ``stream=True``
        returns a generator (constant memory on large folders) instead of a list.
        """
        from .tasks.detect.predict import predict

        args = PredictArgs(weights=self.weights or "", source=source, save=save, **kwargs)
        results = predict(args, self._backend(args.device), verbose=verbose)
        return results if stream else list(results)

    def _backend(self, device: str) -> Backend:
        """The inference backend on ``device``, built once per device (a fused copy; self.model is untouched)."""
        from .engine.device import select_device

        device = select_device(device)
        if self.exported is not None:
            self.exported.device = device
            return self.exported
        if self._cached is None or self._cached.device != device:
            source = self.weights or copy.deepcopy(self._torch_model("predict"))
            self._cached = load_backend(source, device)
        return self._cached

    def export(self, format: str = "onnx", **kwargs: Any) -> str:
        """Write an ONNX or TorchScript file, checked against PyTorch; returns its path (options as `gmyolo export`)."""
        from .tasks.detect.export import export

        model = self._torch_model("export")
        if self.weights:
            return export(ExportArgs(weights=self.weights, format=format, **kwargs))["file"]
        kwargs.setdefault("imgsz", 640)
        return export(ExportArgs(format=format, **kwargs), model=model)["file"]

    def __repr__(self) -> str:
        source = self.weights or self.cfg
        if self.exported is not None:
            return f"YOLO({source!r}, {self.exported.kind}, nc={len(self.names)})"
        return f"YOLO({source!r}, nc={self.model.nc}, params={count_parameters(self.model):,})"


def __getattr__(name: str) -> Any:
    if name == "Results":  # drawing needs OpenCV: imported when asked for
        from .tasks.detect.results import Results

        return Results
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
