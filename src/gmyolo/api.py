"""The Python API in one object: ``YOLO(cfg_or_weights)`` with ``info``, ``train`` and ``val``.

```python
from gmyolo import YOLO
model = YOLO("yolov5n-gmf-m")                  # a packaged model YAML, a path to one, or a checkpoint (.pt)
results = model.train(data="synth", epochs=30)  # same options as `gmyolo train`
metrics = model.val()                           # evaluates the best checkpoint of that run
```
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from .engine.checkpoint import load_checkpoint, model_from_checkpoint
from .engine.trainer import TrainArgs, train
from .engine.val import ValArgs, run_val
from .models.summary import count_macs, count_parameters
from .models.yolo import DetectionModel

__all__ = ["YOLO"]


class YOLO:
    """A detector from a model YAML (untrained) or from a gmyolo checkpoint (trained)."""

    def __init__(self, model: str | os.PathLike = "yolov5n-gmf-m", nc: int | None = None):
        self.weights: str | None = None
        self.cfg: str | None = None
        if str(model).endswith((".pt", ".pth")):
            self.weights = str(model)
            ckpt = load_checkpoint(model)
            self.model: DetectionModel = model_from_checkpoint(ckpt)
            self.train_args = ckpt.get("args", {})
        else:
            self.cfg = str(model)
            self.model = DetectionModel(model, nc=nc)
            self.train_args = {}

    @property
    def names(self) -> dict[int, str]:
        return self.model.names

    def info(self, imgsz: int = 640) -> dict[str, Any]:
        """Parameters, GFLOPs at ``imgsz`` and the layer table (as ``gmyolo info`` prints it)."""
        macs = count_macs(self.model, (imgsz, imgsz))
        return {
            "params": count_parameters(self.model),
            "gflops": 2 * macs / 1e9,
            "strides": [int(s) for s in self.model.stride.tolist()],
            "layers": [dataclasses.asdict(r) for r in self.model.layer_rows],
        }

    def train(self, data: str = "synth", **kwargs: Any) -> dict[str, Any]:
        """Train (options as `gmyolo train`); afterwards this object holds the best checkpoint."""
        if self.weights and "weights" not in kwargs:
            kwargs.setdefault("model", self.train_args.get("model", "yolov5n-gmf-m"))
            kwargs["weights"] = self.weights
        else:
            kwargs.setdefault("model", self.cfg)
        results = train(TrainArgs(data=data, **kwargs))
        self.__init__(results["best"])
        return results

    def val(self, data: str | None = None, **kwargs: Any) -> dict[str, Any]:
        """Evaluate this checkpoint (options as `gmyolo val`)."""
        if not self.weights:
            raise ValueError("val needs trained weights: YOLO('path/to/best.pt'), or call train() first")
        return run_val(ValArgs(weights=self.weights, data=data, **kwargs))

    def __repr__(self) -> str:
        source = self.weights or self.cfg
        return f"YOLO({source!r}, nc={self.model.nc}, params={count_parameters(self.model):,})"
