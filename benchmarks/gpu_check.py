"""The prepared GPU check of gmyolo (run through ``benchmarks/gpu_check.sh``, which sets up the wheels first).

It fits a lent GPU's lease: at most 7 minutes (``--budget``, 420 s by default). Each step is a subprocess with
its own time limit, the important steps first; a step that would start past the budget is skipped and says so.

1. ``peer``: the training step of the ``yolov5`` pip package 7.0.14's yolov5s beside gmyolo's yolov5s at 640 px,
   batch 64 (``benchmarks/yolov5_peer.py``): gmyolo/yolov5 images/s in fp16 (YOLOv5's precision), at gmyolo's
   default, and for the candidates for the default (bf16 and fp16 in channels-last memory). Skipped, with the
   reason, when the package is not installed.
2. ``step``: a GroupMixFormer detector (yolo11n-gmf-m) against plain YOLO11n at 320 px, batch 16 and at 640 px,
   batch 64, each in a process of its own (``gmyolo bench --no-predict --no-data``): training images/s, the
   first step's seconds (cuDNN's autotuning) and the kernel-launching ops of a training step.
3. ``cuda_tests``: the tests marked ``cuda`` (AMP bf16/fp16 steps, a real CUDA out-of-memory as one line,
   SyncBatchNorm, pinned memory), each bounded by its own timeout; the slow one (a compiled training run) comes
   with the extras. A step past its limit gets SIGTERM (the CUDA tests dump their stacks on it), then SIGKILL.
4. ``train``: 20 epochs of ``gmyolo train`` of yolo11n-gmf-nano at 320 px on generated data: seconds per epoch
   (the first apart) and the loss; then ``gmyolo val``, ``gmyolo predict`` and ``gmyolo export --format onnx``
   from its checkpoint.
5. ``extras``: yolo11n-gmf-m's training step at 320 px, batch 16 without cuDNN's autotuning (what its first step
   owes to it), with ``--compile`` (regional: one graph per GMA block shape) and with ``--compile reduce-overhead``
   (CUDA graphs): first-step seconds and images/s, for the decisions on the CUDA defaults; then the slow CUDA
   test (compiled training against eager). Reported, not counted: a compile that fails is a result, not a
   failed check.

``--cpu``: the same steps at tiny sizes on the CPU (150 s at most; what CI runs so the script cannot rot):
the peer only where the package is installed, YOLO11n against yolo11n-gmf-nano at 64 px, the CUDA tests
collected and skipped, 2 short epochs (the loss reported, not required to fall), no extras.

Everything goes to ``OUT/gpu_check.json`` (one object: environment, each step's status, seconds and
results) and ``OUT/gpu_check.log`` (every command and its output); each step's result is also printed as one
line when it ends, so that a run cut short still shows what it measured. Exit status 0 when every step that ran
passed (a step skipped for lack of budget, or the peer for lack of its package, does not fail the check).
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


class Check:
    """The run: a log file, the JSON being built, and the time budget."""

    def __init__(self, out: Path, cpu: bool, budget: float):
        self.out, self.cpu, self.deadline = out, cpu, time.monotonic() + budget
        self.t0 = time.monotonic()
        out.mkdir(parents=True, exist_ok=True)
        self.log = open(out / "gpu_check.log", "w", buffering=1)
        self.result: dict[str, Any] = {"mode": "cpu" if cpu else "gpu", "budget_s": budget, "steps": {}}
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def say(self, text: str) -> None:
        line = f"[gpu_check {time.monotonic() - self.t0:6.1f}s] {text}"
        print(line, flush=True)
        self.log.write(line + "\n")

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, name: str, cmd: list[str], limit: float, cwd: Path = REPO) -> dict[str, Any]:
        """Run ``cmd`` (at most ``limit`` s, and never past the budget); stdout and stderr go to the log."""
        limit = min(limit, self.left())
        if limit < 5:
            self.say(f"{name}: skipped, out of time budget")
            return {"ok": None, "skipped": "out of time budget", "seconds": 0.0}
        shown = " ".join(cmd[:2] + ["CODE"] if cmd[1:2] == ["-c"] else cmd)
        self.say(f"{name}: {shown} (limit {limit:.0f} s)")
        t = time.monotonic()
        p = subprocess.Popen(cmd, cwd=cwd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = p.communicate(timeout=limit)
            rc = p.returncode
        except subprocess.TimeoutExpired:
            # SIGTERM first, so that what handles it (the CUDA tests dump every thread's stack) can say where it
            # was; SIGKILL if it has not ended 15 s later.
            p.terminate()
            try:
                out, err = p.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                out, err = p.communicate()
            rc, err = None, (err or "") + f"\n(timed out after {limit:.0f} s)"
        seconds = time.monotonic() - t
        self.log.write(f"--- {name} stdout ---\n{out}\n--- {name} stderr ---\n{err}\n--- {name}: rc {rc}, "
                       f"{seconds:.1f} s ---\n")  # fmt: skip
        self.say(f"{name}: rc {rc} in {seconds:.1f} s")
        r: dict[str, Any] = {"ok": rc == 0, "rc": rc, "seconds": round(seconds, 1), "stdout": out, "stderr": err}
        if rc != 0:
            r["error"] = (err or out)[-1500:]
        return r

    def run_quiet(self, name: str, cmd: list[str], limit: float, keep: tuple[str, ...] = ()) -> dict[str, Any]:
        """:meth:`run`, keeping only the output lines that contain one of ``keep``."""
        r = self.run(name, cmd, limit)
        text = r.pop("stdout", "") + "\n" + r.pop("stderr", "")
        if keep:
            r["lines"] = [line.strip() for line in text.splitlines() if any(k in line for k in keep)][-6:]
        return r


def as_text(b: bytes | str | None) -> str:
    return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")


def gmyolo(*args: str) -> list[str]:
    return [sys.executable, "-m", "gmyolo", *args]


def environment(check: Check) -> dict[str, Any]:
    code = (
        "import json, os, torch, numpy, cv2\n"
        "cuda = torch.cuda.is_available()\n"
        "print(json.dumps({'torch': torch.__version__, 'cuda': torch.version.cuda, 'numpy': numpy.__version__,\n"
        "  'opencv': cv2.__version__, 'gpu': torch.cuda.get_device_name(0) if cuda else None,\n"
        "  'gpu_memory_gb': round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if cuda else None,\n"
        "  'bf16': torch.cuda.is_bf16_supported() if cuda else None, 'cpu_cores': len(os.sched_getaffinity(0))}))"
    )
    r = check.run("environment", [sys.executable, "-c", code], 120)
    env = json.loads(r["stdout"].strip().splitlines()[-1]) if r["ok"] else {"error": r.get("error")}
    if not check.cpu:
        smi = check.run("nvidia-smi", ["nvidia-smi", "-L"], 30) if shutil.which("nvidia-smi") else {}
        env["nvidia_smi"] = (smi.get("stdout") or "").strip()
    env["python"] = platform.python_version()
    env["packages"] = {m: importlib.util.find_spec(m) is not None for m in ("pycocotools", "yolov5", "onnxruntime")}
    return env


def cuda_tests(check: Check, marks: str = "cuda and not slow", limit: float = 110) -> dict[str, Any]:
    """The CUDA tests (the slow compiled one runs among the extras, last)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", marks, "-p", "no:cacheprovider", "tests/engine/test_cuda.py"]
    r = check.run(f"cuda_tests ({marks})", cmd, 150 if check.cpu else limit)
    r.pop("stderr", None)
    lines = [line for line in r.pop("stdout", "").splitlines() if line.strip()]
    r["summary"] = lines[-1] if lines else ""
    if check.cpu and r["rc"] == 0:
        r["note"] = "no GPU: the CUDA tests were collected and skipped"
    check.say(f"cuda_tests ({marks}): {r['summary']}")
    return r


def bench(
    check: Check, model: str, imgsz: int, batch: int, limit: float, compile_: str = "off", extra: tuple[str, ...] = ()
) -> dict[str, Any]:
    """One model's training step (and eager inference) in a process of its own: images/s, first step, ops."""
    device = ["--device", "cpu", "--threads", "1"] if check.cpu else ["--device", "0"]
    args = ["--imgsz", str(imgsz), "--batch", str(batch), *device, "--modes", "eager", "--no-predict", "--no-data",
            "--repeats", "3", "--warmup", "1", "--compile", compile_, *extra, "--json"]  # fmt: skip
    name = " ".join([f"{model} {imgsz}/b{batch}", *([f"compile {compile_}"] if compile_ != "off" else []), *extra])
    r = check.run(f"bench {name}", gmyolo("bench", "--model", model, *args), limit)
    r.pop("stderr", None)
    report = parse_json(r.pop("stdout", ""))
    if r["ok"] and report is None:
        r["ok"], r["error"] = False, "no JSON on stdout"
    if report:
        t, ops = report.get("train", {}), report.get("ops", {})
        r["summary"] = {
            "precision": report.get("precision"),
            "train_images_per_s": round(t.get("images_per_s", 0.0), 1),
            "step_ms": round(t.get("median_ms", 0.0), 1),
            "first_step_s": round(t.get("first_step_s", 0.0), 1),
            "ops_per_step": ops.get("ops"),
            "peak_gpu_memory_mb": round(t["cuda_max_memory_mb"]) if "cuda_max_memory_mb" in t else None,
        }
        check.say(f"bench {name}: {r['summary']}")
    return r


def steps(check: Check) -> dict[str, Any]:
    """The GroupMixFormer detector against plain YOLO11n, at two sizes."""
    if check.cpu:
        runs = [(m, 64, 2, 60) for m in ("yolo11n", "yolo11n-gmf-nano")]
    else:
        sizes = ((320, 16, 45), (640, 64, 60))  # size, batch, seconds at most
        runs = [(m, s, b, limit) for s, b, limit in sizes for m in ("yolo11n", "yolo11n-gmf-m")]
    out = {f"{m} {s}/b{b}": bench(check, m, s, b, limit) for m, s, b, limit in runs}
    for size in {k.split(" ")[1] for k in out}:
        plain, gmf = (out.get(f"{m} {size}", {}).get("summary") for m in ("yolo11n", runs[1][0]))
        if plain and gmf and gmf["train_images_per_s"]:
            ratio = plain["train_images_per_s"] / gmf["train_images_per_s"]
            out[f"yolo11n over {runs[1][0]} at {size}"] = round(ratio, 2)
            check.say(f"step {size}: yolo11n trains {ratio:.2f}x as many images/s as {runs[1][0]}")
    return out


def parse_json(text: str) -> dict[str, Any] | None:
    start = text.find("{")
    try:
        return json.loads(text[start:]) if start >= 0 else None
    except json.JSONDecodeError:
        return None


EPOCH_LINE = re.compile(r"epoch (\d+)/\d+: .* \| ([\d.]+) s$")


def train(check: Check) -> dict[str, Any]:
    """20 epochs of the GroupMixFormer quick-start detector at 320 px (2 tiny ones on the CPU): seconds per epoch;
    then val, predict and ONNX export from the checkpoint."""
    work = check.out / "train"
    shutil.rmtree(work, ignore_errors=True)  # a rerun into the same folder starts afresh
    if check.cpu:
        epochs, synth = 2, ["--n-train", "16", "--n-val", "8", "--imgsz", "64"]
        run = ["--imgsz", "64", "--batch", "8", "--nbs", "8", "--device", "cpu", "--workers", "2", "--no-plots"]
    else:
        epochs, synth = 20, ["--n-train", "256", "--n-val", "64", "--imgsz", "320"]
        run = ["--imgsz", "320", "--batch", "16", "--device", "0"]
    r: dict[str, Any] = {}
    steps = [
        ("data", gmyolo("data", "synth", "--out", str(work / "synth"), *synth), 60),
        ("train", gmyolo("train", "--data", str(work / "synth/data.yaml"), "--model", "yolo11n-gmf-nano", "--epochs",
                         str(epochs), *run, "--project", str(work / "runs"), "--name", "exp", "--exist-ok",
                         "--no-tensorboard"), 100 if check.cpu else 150),
    ]  # fmt: skip
    for name, cmd, limit in steps:
        full = check.run(f"train: {name}", cmd, limit)
        text = full.pop("stdout", "") + "\n" + full.pop("stderr", "")
        full["lines"] = [line.strip() for line in text.splitlines() if "epoch " in line or "speed:" in line][-4:]
        r[name] = full
        if name == "train":
            seconds = [float(m.group(2)) for m in map(EPOCH_LINE.search, text.splitlines()) if m]
            r["epoch_seconds"] = seconds
            if seconds:
                rest = seconds[1:] or seconds
                r["first_epoch_s"], r["median_epoch_s"] = seconds[0], statistics.median(rest)
                check.say(f"train: {len(seconds)} epochs, the first {seconds[0]:.1f} s, then a median of "
                          f"{r['median_epoch_s']:.1f} s")  # fmt: skip
        if not full["ok"]:
            return {"ok": False, **r}
    run_dir = work / "runs/exp"
    rows = list(csv.DictReader(open(run_dir / "results.csv", newline="")))
    losses = [sum(float(v) for k, v in row.items() if k.startswith("train/")) for row in rows]
    r["train"].update(losses=losses, map50=[float(row["metrics/mAP_0.5"]) for row in rows])
    r["loss_fell"] = len(losses) == epochs and losses[-1] < losses[0]
    best = str(run_dir / "weights/best.pt")
    device = "cpu" if check.cpu else "0"
    for name, cmd in (
        ("val", gmyolo("val", "--weights", best, "--device", device, "--project", str(work / "val"), "--exist-ok")),
        ("predict", gmyolo("predict", "--weights", best, "--source", str(work / "synth/images/val"), "--device",
                           device, "--nosave", "--project", str(work / "predict"))),
        ("export", gmyolo("export", "--weights", best, "--format", "onnx")),
    ):  # fmt: skip
        r[name] = check.run_quiet(f"train: {name}", cmd, 60, ("speed", "mAP", " all ", "max |", "pycocotools"))
    r["ok"] = all(r[k]["ok"] for k in ("data", "train", "val", "predict", "export")) and (check.cpu or r["loss_fell"])
    if check.cpu:
        r["note"] = "CPU mode: 2 short epochs; the loss is reported, not required to fall"
    return r


def peer(check: Check) -> dict[str, Any]:
    out = check.out / "peer.json"
    size = ["--imgsz", "64", "--batch", "2", "--device", "cpu", "--repeats", "2", "--warmup", "1"] if check.cpu else [
        "--imgsz", "640", "--batch", "64", "--device", "0", "--repeats", "5", "--warmup", "2"]  # fmt: skip
    cmd = [sys.executable, "benchmarks/yolov5_peer.py", *size, "--out", str(out)]
    r = check.run_quiet("peer", cmd, 60 if check.cpu else 110)
    r["result"] = json.loads(out.read_text()) if out.is_file() else None
    if r["rc"] == 3:  # the package is not installed: say so, do not fail
        r["ok"], r["skipped"] = None, (r["result"] or {}).get("skipped", "yolov5 not installed")
        r.pop("error", None)
        check.say(f"peer: skipped: {r['skipped']}")
    elif r["result"] and "over_yolov5" in r["result"]:
        ratios = ", ".join(f"{k} {v:.3f}x" for k, v in r["result"]["over_yolov5"].items() if k != "yolov5")
        check.say(f"peer: images/s over yolov5's: {ratios}")
    return r


def extras(check: Check) -> dict[str, Any]:
    """yolo11n-gmf-m's step at 320 px without cuDNN's autotuning (what its first step owes to it), then compiled in
    both modes (compile seconds in the first step): reported, not counted, they inform decisions. Then the slow
    CUDA test, which counts."""
    out = {"--no-autotune": bench(check, "yolo11n-gmf-m", 320, 16, 45, extra=("--no-autotune",))}
    for mode in ("default", "reduce-overhead"):
        out[f"--compile {mode}"] = bench(check, "yolo11n-gmf-m", 320, 16, 100, mode)
    for r in out.values():
        r["counts_for_the_check"] = False  # measurements; the test below counts
    out["cuda_tests slow"] = cuda_tests(check, "cuda and slow", 250)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.environ.get("OUT") or "runs/gpu_check", help="folder for JSON and log")
    parser.add_argument("--cpu", action="store_true", help="the tiny CPU mode (no GPU needed; CI)")
    parser.add_argument("--budget", type=float, default=None, help="seconds in all (default: 420 GPU, 150 CPU)")
    args = parser.parse_args()
    check = Check(Path(args.out).resolve(), args.cpu, args.budget or (150 if args.cpu else 420))
    steps_done = check.result["steps"]
    check.result["environment"] = environment(check)
    if not args.cpu and not check.result["environment"].get("gpu"):
        check.say("no CUDA GPU found: run with --cpu for the CPU mode")
        check.result["ok"] = False
        write(check)
        return 2
    # The most important first, written out after each step: a run cut short keeps what it measured.
    for name, step in (("peer", peer), ("step", steps), ("cuda_tests", cuda_tests), ("train", train)):
        steps_done[name] = step(check)
        write(check, final=False)
    if not args.cpu:
        steps_done["extras"] = extras(check)
    failed = [name for name, ok in step_status(steps_done) if ok is False]
    check.result["failed"] = failed
    check.result["ok"] = not failed
    check.result["seconds"] = round(time.monotonic() - check.t0, 1)
    check.say(f"{'passed' if not failed else 'FAILED: ' + ', '.join(failed)} in {check.result['seconds']} s; "
              f"{check.out / 'gpu_check.json'}")  # fmt: skip
    write(check)
    return 0 if not failed else 1


def step_status(steps: dict[str, Any]):
    for name, step in steps.items():
        if name in ("step", "extras"):
            for key, r in step.items():
                if isinstance(r, dict) and r.get("counts_for_the_check", True):
                    yield f"{name} {key}", r.get("ok")
        else:
            yield name, step.get("ok")


def write(check: Check, final: bool = True) -> None:
    (check.out / "gpu_check.json").write_text(json.dumps(check.result, indent=2, default=str))
    if final:
        check.log.close()


if __name__ == "__main__":
    sys.exit(main())
