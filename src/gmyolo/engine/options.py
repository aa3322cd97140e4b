"""Speed options every command shares, as plain values and checks (no torch: the command line reads them first).

- ``amp``: mixed precision, one of :data:`AMP_MODES`. ``auto`` is bf16 on a GPU that has it natively, fp16 with
  a GradScaler on other GPUs, and full precision (fp32) on the CPU; ``bf16`` / ``fp16`` ask for one (bf16 also
  runs on the CPU), ``off`` is fp32. The booleans of gmyolo < 0.2 (``amp: true|false``) still read: True is
  ``auto``, False ``off``.
- ``workers``: DataLoader processes; None picks YOLOv5's number (:func:`gmyolo.data.dataset.default_workers`).
- ``compile``: ``torch.compile`` the model (never the loss), one of :data:`COMPILE_MODES`; off unless asked.
  ``default`` is torch.compile's default mode, ``reduce-overhead`` adds CUDA graphs (a fixed-shape step replayed
  with one launch per compiled region), ``max-autotune`` also searches kernels. The booleans of the run files
  of earlier versions (``compile: true|false``) still read: True is ``default``, False ``off``.
"""

from __future__ import annotations

__all__ = ["AMP_MODES", "COMPILE_MODES", "amp_mode", "compile_mode", "check_workers"]

AMP_MODES = ("auto", "bf16", "fp16", "off")
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")


def amp_mode(value: str | bool | None) -> str:
    """``value`` as one of :data:`AMP_MODES` (booleans and None from older run files: True/None auto, False off)."""
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
    """``value`` as one of :data:`COMPILE_MODES` (booleans and None from older run files: True default, False off)."""
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
