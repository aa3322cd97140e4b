"""The options of the detection commands, as dataclasses: ``gmyolo train|val|predict|export`` and the API.

Plain data and checks, no torch: the command line builds its parser (and ``--help``) from these
defaults before any heavy import.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...engine.options import TrainOptions

__all__ = ["TrainArgs", "ValArgs", "PredictArgs", "ExportArgs", "EXPORT_FORMATS", "DEFAULT_OPSET"]

EXPORT_FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript"}
DEFAULT_OPSET = 17


@dataclass
class TrainArgs(TrainOptions):
    """``gmyolo train``: :class:`~gmyolo.engine.options.TrainOptions` with detection's defaults and its own options."""

    data: str = "synth"  # dataset YAML, or 'synth' for the built-in synthetic dataset
    model: str = "yolo11n-gmf-nano"  # model YAML (packaged name or path); the quick start's anchor-free detector
    weights: str | None = None  # a gmyolo checkpoint to start from (weights copied where shapes fit)
    # Defaults: the quick start (`gmyolo train`: the nano detector on the synthetic data, ~5 CPU minutes).
    epochs: int = 25
    imgsz: int = 160
    batch: int = 16
    project: str = "runs/train"
    patience: int = 50  # early stop after this many epochs without a better fitness
    backbone_weights: str | None = None  # the authors' GroupMixFormer checkpoint for the backbone
    nbs: int = 16  # nominal batch: gradients accumulate over nbs/batch batches per step (YOLOv5: 64)
    optimizer: str = "auto"  # auto: AdamW for transformer backbones, SGD otherwise
    cos_lr: bool = False  # cosine instead of linear learning-rate decay
    freeze: int = 0  # freeze the first N layers
    freeze_stages: int = 0  # freeze the stem and first N backbone stages (GroupMixFormer, Timm, TorchVision)
    close_mosaic: int = 5  # no mosaic for the last N epochs
    cache: bool = False  # keep decoded training images in RAM
    # Overrides, a packaged set's name or a YAML path, or the command line's items: [NAME|PATH] KEY=VALUE ...
    hyp: dict[str, float] | str | list[str] = field(default_factory=dict)
    noautoanchor: bool = False  # keep the model's anchors even when they fit the labels badly
    synth_dir: str = "datasets/synth"  # where 'synth' data is generated if missing

    def check(self) -> None:
        super().check()
        if self.nbs < 1:
            raise ValueError(f"--nbs must be a positive integer, got {self.nbs}")
        for name in ("freeze", "freeze_stages", "close_mosaic"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must not be negative, got {getattr(self, name)}")
        if self.optimizer.lower() not in ("auto", "sgd", "adamw"):
            raise ValueError(f"--optimizer must be auto, SGD or AdamW, got {self.optimizer!r}")


@dataclass
class ValArgs:
    weights: str = "runs/train/exp/weights/best.pt"
    data: str | None = None  # default: the dataset the checkpoint was trained on
    split: str = "val"
    imgsz: int | None = None  # default: the training size
    batch: int = 32
    device: str = ""
    workers: int | None = None  # None: min(8, CPU cores, batch)
    compile: str = "off"  # torch.compile a checkpoint's model (exported files run as they are): off | default | ...
    conf: float = 0.001
    iou: float = 0.6
    max_det: int = 300
    save_json: bool = False  # COCO-format detections + pycocotools evaluation
    coco_gt: str | None = None  # a COCO ground-truth JSON for pycocotools (default: made from the labels)
    # How detections are scored: auto = YOLOv5 7.0 val.py's matching and AP (best_iou) for YOLOv5's head and
    # pycocotools' (coco) for the others; coco or best_iou for one rule whatever the head.
    matching: str = "auto"
    project: str = "runs/val"
    name: str = "exp"
    exist_ok: bool = False
    plots: bool = True
    progress: bool = True


@dataclass
class PredictArgs:
    weights: str = "runs/train/exp/weights/best.pt"  # checkpoint (.pt), .onnx or .torchscript
    source: str = ""  # image, folder, glob, list file (.txt) or video
    imgsz: int | None = None  # default: the size the model was trained / exported at
    conf: float = 0.25
    iou: float = 0.45
    max_det: int = 300
    classes: list[int] | None = None  # keep only these class ids
    agnostic_nms: bool = False
    device: str = ""
    compile: str = "off"  # torch.compile a checkpoint's model (exported files run as they are): off | default | ...
    vid_stride: int = 1  # use every n-th video frame
    save: bool = True  # annotated images / videos
    save_txt: bool = False  # YOLO-format labels per image (labels/<stem>.txt)
    save_conf: bool = False  # add the score to each txt line
    save_json: bool = False  # predictions.json for the whole run
    line_width: int | None = None
    hide_labels: bool = False
    hide_conf: bool = False
    project: str = "runs/predict"
    name: str = "exp"
    exist_ok: bool = False

    def check(self) -> None:
        if not 0 <= self.conf <= 1 or not 0 <= self.iou <= 1:
            raise ValueError(f"--conf and --iou must be between 0 and 1, got {self.conf} and {self.iou}")
        if self.max_det < 1:
            raise ValueError(f"--max-det must be positive, got {self.max_det}")
        if self.vid_stride < 1:
            raise ValueError(f"--vid-stride must be positive, got {self.vid_stride}")
        if self.imgsz is not None and self.imgsz < 1:
            raise ValueError(f"--imgsz must be positive, got {self.imgsz}")


@dataclass
class ExportArgs:
    weights: str = "runs/train/exp/weights/best.pt"
    format: str = "onnx"  # onnx | torchscript
    imgsz: int | None = None  # default: the training size
    batch: int = 1  # batch of the example input (the batch axis stays dynamic)
    dynamic: bool = False  # also make height and width dynamic
    opset: int = DEFAULT_OPSET
    dynamo: bool = False  # ONNX: use the torch.export-based exporter instead of the TorchScript-based one
    output: str | None = None  # default: beside the weights, with the format's suffix
    tolerance: float = 1e-3  # largest allowed |exported - PyTorch| on the decoded output
    device: str = "cpu"

    def check(self) -> None:
        if self.format not in EXPORT_FORMATS:
            raise ValueError(f"--format must be one of {', '.join(EXPORT_FORMATS)}, got {self.format!r}")
        if self.batch < 1:
            raise ValueError(f"--batch must be positive, got {self.batch}")
        if self.imgsz is not None and self.imgsz < 1:
            raise ValueError(f"--imgsz must be positive, got {self.imgsz}")
        if self.format == "onnx" and not 11 <= self.opset <= 23:
            raise ValueError(f"--opset must be between 11 and 23, got {self.opset}")
