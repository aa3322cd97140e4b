"""The options of ``gmyolo bench`` (plain data and checks, no torch: the command line reads them first)."""

from __future__ import annotations

from dataclasses import dataclass

from ..engine.options import amp_mode, check_workers, compile_mode

__all__ = ["BenchArgs", "MODES"]

MODES = ("literal", "eager", "fused", "channels-last", "compile", "cuda-graph", "onnx")


@dataclass
class BenchArgs:
    model: str = (
        "yolov5n-gmf-m"  # detector YAML (packaged name or path), gmyolo checkpoint, or groupmixformer-m|t|s|b|l
    )
    imgsz: int | None = None  # default: 640 for a detector, 224 for a GroupMixFormer
    batch: int = 8  # the training batch (training step, data pipeline); inference throughput too, unless infer_batch
    infer_batch: int | None = None  # the larger inference batch (default: batch); latency is always at batch 1
    device: str = ""
    threads: int | None = None  # torch (and ONNX Runtime) intra-op threads; default: torch's
    repeats: int = 5
    warmup: int = 2
    modes: list[str] | None = None  # default: all that apply; compile only on CUDA (minutes to compile on a CPU)
    amp: str = "auto"  # precision of the training step and the inference modes on a GPU (as `gmyolo train --amp`)
    compile: str = "off"  # torch.compile the model in the training step, as `gmyolo train --compile [MODE]`
    train: bool = True
    predict: bool = True
    data: bool = True
    workers: int | None = None  # DataLoader workers for the data pipeline; None: as `gmyolo train` picks them
    features: bool = False  # a GroupMixFormer in features mode (no classifier)
    grad_checkpointing: bool = False  # GroupMixFormer activation checkpointing in the training step
    channels_last: bool = False  # the training step's model and images in channels-last memory (NHWC convolutions)
    autotune: bool = True  # cuDNN autotuning for the training step on CUDA, as `gmyolo train` runs its steps

    def check(self) -> None:
        if self.imgsz is not None and self.imgsz < 32:
            raise ValueError(f"--imgsz must be at least 32, got {self.imgsz}")
        for name in ("batch", "repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be a positive integer, got {getattr(self, name)}")
        if self.infer_batch is not None and self.infer_batch < 1:
            raise ValueError(f"--infer-batch must be a positive integer, got {self.infer_batch}")
        if self.warmup < 0:
            raise ValueError("--warmup must not be negative")
        check_workers(self.workers)
        self.amp = amp_mode(self.amp)
        self.compile = compile_mode(self.compile)
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"--threads must be a positive integer, got {self.threads}")
        unknown = sorted(set(self.modes or []) - set(MODES))
        if unknown:
            raise ValueError(f"unknown --modes {', '.join(unknown)}; choose from {', '.join(MODES)}")
