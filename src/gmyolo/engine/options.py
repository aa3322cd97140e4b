"""The options every command shares, as plain values and checks (no torch: the command line reads them first):
the speed options below, and :class:`TrainOptions`, the base of every task's training options.

- ``amp``: mixed precision, one of :data:`AMP_MODES`. ``auto`` is bf16 on a GPU that has it natively, fp16 with
  a GradScaler on other GPUs, and full precision (fp32) on the CPU; ``bf16`` / ``fp16`` ask for one (bf16 also
  runs on the CPU), ``off`` is fp32. The Python API also takes a boolean, as Ultralytics' ``amp=True`` does: True
  is ``auto``, False ``off``.
- ``workers``: DataLoader processes; None picks YOLOv5's number (:func:`gmyolo.data.dataset.default_workers`).
- ``compile``: ``torch.compile`` the model (never the loss), one of :data:`COMPILE_MODES`; off unless asked.
  ``default`` is torch.compile's default mode, ``reduce-overhead`` adds CUDA graphs (a fixed-shape step replayed
  with one launch per compiled region), ``max-autotune`` also searches kernels. The Python API also takes a
  boolean, as Ultralytics' ``compile=True`` does: True is ``default``, False ``off``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["AMP_MODES", "COMPILE_MODES", "TrainOptions", "amp_mode", "compile_mode", "check_workers"]

AMP_MODES = ("auto", "bf16", "fp16", "off")
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")


def amp_mode(value: str | bool | None) -> str:
    """``value`` as one of :data:`AMP_MODES` (a boolean as the Python API may give it: True auto, False off)."""
    if value is None or value is True:
        return "auto"
    if value is False:
        return "off"
    mode = str(value).strip().lower()
    mode = {"bfloat16": "bf16", "float16": "fp16", "half": "fp16", "fp32": "off", "none": "off"}.get(mode, mode)
    if mode not in AMP_MODES:
        raise ValueError(f"--amp must be one of {', '.join(AMP_MODES)}, got {value!r}")
    return mode


def compile_mode(value: str | bool | None) -> str:
    """``value`` as one of :data:`COMPILE_MODES` (a boolean as the Python API may give it: True default, False off)."""
    if value is None or value is False:
        return "off"
    if value is True:
        return "default"
    mode = str(value).strip().lower()
    if mode not in COMPILE_MODES:
        raise ValueError(f"--compile must be one of {', '.join(COMPILE_MODES)}, got {value!r}")
    return mode


def check_workers(workers: int | None) -> None:
    if workers is not None and workers < 0:
        raise ValueError(f"--workers must not be negative, got {workers}")


@dataclass
class TrainOptions:
    """What every task's training takes (``TrainArgs``, ``ClassifyTrainArgs`` add their own): the run, the data's
    size and batch, the machine, and how it runs. A task overrides the defaults it needs."""

    data: str = ""
    model: str = ""
    weights: str | None = None
    epochs: int = 1
    imgsz: int = 640
    batch: int = 16
    device: str = ""
    workers: int | None = None  # loader processes per GPU; None: min(8, CPU cores / GPUs, batch) as YOLOv5
    project: str = "runs/train"
    name: str = "exp"
    exist_ok: bool = False
    resume: str | None = None  # last.pt of an interrupted run, or 'last' for the newest under project
    patience: int = 0  # stop after this many epochs without a better fitness (0: never)
    seed: int = 0
    amp: str = "auto"  # auto (bf16 on GPUs that have it, else fp16; fp32 on the CPU) | bf16 | fp16 | off
    compile: str = "off"  # torch.compile the model for training: off | default | reduce-overhead | max-autotune
    sync_bn: bool = False  # BatchNorm statistics over all GPUs (DDP)
    tensorboard: bool = True  # also log to TensorBoard when it is installed
    plots: bool = True
    progress: bool = True

    def check(self) -> None:
        """Refuse bad values before any work (and normalise ``amp`` and ``compile``, which the Python API also takes
        as booleans, as Ultralytics' does)."""
        for name in ("epochs", "imgsz", "batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be a positive integer, got {getattr(self, name)}")
        if self.patience < 0:
            raise ValueError(f"--patience must not be negative, got {self.patience}")
        check_workers(self.workers)
        self.amp = amp_mode(self.amp)
        self.compile = compile_mode(self.compile)
