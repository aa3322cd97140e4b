"""The prepared GPU check of gmyolo (run through ``benchmarks/gpu_check.sh``, which sets up the wheels first).

Steps, each a subprocess with its own time limit inside one overall budget (later steps are skipped, and
say so, when the budget runs out):

1. ``cuda_tests``: the tests marked ``cuda`` (AMP bf16/fp16 steps, a real CUDA out-of-memory as one line,
   SyncBatchNorm, pinned memory, a compiled training step);
2. ``bench``: ``gmyolo bench --device 0`` for yolov5s, yolov5s-gmf-t and, where it exists, the anchor-free
   GroupMixFormer detector (yolo11s-gmf-t) at 640, batch 64: training images/s (--amp auto), data-pipeline
   images/s with the default workers and the data-bound verdict, peak GPU memory, inference at batch 1 and
   32 in eager, fused, channels-last and CUDA-graph modes; torch.compile in a run of its own per model, so
   that a slow compilation costs only that measurement;
3. ``train``: 2 epochs of ``gmyolo train`` on synthetic data at 640 (the loss must fall), then ``gmyolo val``,
   ``gmyolo predict`` and ``gmyolo export --format onnx`` from its checkpoint;
4. ``peer``: the same training step for the ``yolov5`` pip package 7.0.14's yolov5s beside gmyolo's yolov5s
   (``benchmarks/yolov5_peer.py``), skipped with the reason when the package is not installed.

``--cpu``: the same steps at tiny sizes on the CPU (under 2 minutes; what CI runs so the script cannot rot):
the CUDA tests are collected and skip, the bench runs two modes, training runs 2 short epochs (its loss is
reported, not required to fall), the peer runs only where the package is installed.

Everything goes to ``OUT/gpu_check.json`` (one object: environment, each step's status, seconds and
results) and ``OUT/gpu_check.log`` (every command and its output). Exit status 0 when every step that ran
passed (a step skipped for lack of budget, or the peer for lack of its package, does not fail the check).
"""

from __future__ import annotations

import argparse
import csv
import importlib.resources
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
AFREE_MODEL = "yolo11s-gmf-t"  # the anchor-free GroupMixFormer detector, where the tree has it


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
        try:
            p = subprocess.run(cmd, cwd=cwd, env=self.env, capture_output=True, text=True, timeout=limit)
            rc, out, err = p.returncode, p.stdout, p.stderr
        except subprocess.TimeoutExpired as e:
            rc, out, err = None, as_text(e.stdout), as_text(e.stderr) + f"\n(timed out after {limit:.0f} s)"
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


def cuda_tests(check: Check) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "tests/engine/test_cuda.py"]
    r = check.run("cuda_tests", cmd, 150 if check.cpu else 200)
    r.pop("stderr", None)
    lines = [line for line in r.pop("stdout", "").splitlines() if line.strip()]
    r["summary"] = lines[-1] if lines else ""
    if check.cpu and r["rc"] == 0:
        r["note"] = "no GPU: the CUDA tests were collected and skipped"
    return r


def bench(check: Check, model: str) -> dict[str, Any]:
    if check.cpu:
        size = ["--imgsz", "64", "--batch", "4", "--infer-batch", "2", "--device", "cpu", "--threads", "1"]
        main = [*size, "--repeats", "2", "--warmup", "1", "--modes", "eager", "fused"]
        compiled = None
    else:
        size = ["--imgsz", "640", "--batch", "64", "--infer-batch", "32", "--device", "0"]
        main = [*size, "--repeats", "5", "--warmup", "2", "--modes", "eager", "fused", "channels-last", "cuda-graph"]
        compiled = [*size, "--repeats", "5", "--warmup", "1", "--modes", "eager", "compile", "--no-train",
                    "--no-predict", "--no-data"]  # fmt: skip
    r = check.run(f"bench {model}", gmyolo("bench", "--model", model, *main, "--json"), 60 if check.cpu else 150)
    r.pop("stderr", None)
    r["report"] = parse_json(r.pop("stdout", ""))
    if r["ok"] and r["report"] is None:
        r["ok"], r["error"] = False, "no JSON on stdout"
    if compiled is not None:
        c = check.run(f"bench {model} compile", gmyolo("bench", "--model", model, *compiled, "--json"), 150)
        c.pop("stderr", None)
        report = parse_json(c.pop("stdout", ""))
        r["compile"] = {"ok": c["ok"], "seconds": c["seconds"], **({"error": c["error"]} if "error" in c else {})}
        if report:
            r["compile"]["rows"] = [row for row in report["inference"]["rows"] if row["mode"] == "compile"]
            r["compile"]["skipped"] = report["inference"]["skipped"].get("compile")
        # A compile that fails or outlasts its limit is reported, not a failed check (a torch issue to file).
        r["compile"]["counts_for_the_check"] = False
    r["summary"] = bench_summary(r["report"]) if r["report"] else None
    return r


def parse_json(text: str) -> dict[str, Any] | None:
    start = text.find("{")
    try:
        return json.loads(text[start:]) if start >= 0 else None
    except json.JSONDecodeError:
        return None


def bench_summary(report: dict[str, Any]) -> dict[str, Any]:
    """The figures issue 18 asks for, pulled out of one bench report."""
    s: dict[str, Any] = {"precision": report.get("precision")}
    t, d = report.get("train"), report.get("data")
    if t:
        s["train_images_per_s"] = round(t["images_per_s"], 1)
        s["peak_gpu_memory_mb"] = round(t["cuda_max_memory_mb"]) if "cuda_max_memory_mb" in t else None
    if d:
        s["data_images_per_s"] = round(d["images_per_s"], 1)
        s["workers"] = d["workers"]
        s["training_fed_images_per_s"] = round(d.get("training_fed_images_per_s", 0.0), 1)
        s["bound"] = d.get("balance", {}).get("bound")
    for row in report["inference"]["rows"]:
        key = "b1_latency_ms" if row["batch"] == 1 else f"b{row['batch']}_images_per_s"
        s.setdefault(key, {})[row["mode"]] = round(row["median_ms"] if row["batch"] == 1 else row["images_per_s"], 2)
    return s


def train(check: Check) -> dict[str, Any]:
    """2 epochs on generated data, then val, predict and ONNX export from the checkpoint."""
    work = check.out / "train"
    shutil.rmtree(work, ignore_errors=True)  # a rerun into the same folder starts afresh
    if check.cpu:
        synth = ["--n-train", "16", "--n-val", "8", "--imgsz", "64"]
        run = ["--imgsz", "64", "--batch", "8", "--nbs", "8", "--device", "cpu", "--workers", "2", "--no-plots"]
    else:
        synth = ["--n-train", "256", "--n-val", "64", "--imgsz", "640"]
        run = ["--imgsz", "640", "--batch", "32", "--nbs", "32", "--device", "0"]
    r: dict[str, Any] = {}
    steps = [
        ("data", gmyolo("data", "synth", "--out", str(work / "synth"), *synth), 120),
        ("train", gmyolo("train", "--data", str(work / "synth/data.yaml"), "--epochs", "2", *run, "--project",
                         str(work / "runs"), "--name", "exp", "--exist-ok", "--no-tensorboard"), 240),
    ]  # fmt: skip
    for name, cmd, limit in steps:
        r[name] = check.run_quiet(f"train: {name}", cmd, limit, ("epoch ", "speed:"))
        if not r[name]["ok"]:
            return {"ok": False, **r}
    run_dir = work / "runs/exp"
    rows = list(csv.DictReader(open(run_dir / "results.csv", newline="")))
    losses = [sum(float(v) for k, v in row.items() if k.startswith("train/")) for row in rows]
    r["train"].update(losses=losses, map50=[float(row["metrics/mAP_0.5"]) for row in rows])
    r["loss_fell"] = len(losses) == 2 and losses[1] < losses[0]
    best = str(run_dir / "weights/best.pt")
    device = "cpu" if check.cpu else "0"
    for name, cmd in (
        ("val", gmyolo("val", "--weights", best, "--device", device, "--project", str(work / "val"), "--exist-ok")),
        ("predict", gmyolo("predict", "--weights", best, "--source", str(work / "synth/images/val"), "--device",
                           device, "--nosave", "--project", str(work / "predict"))),
        ("export", gmyolo("export", "--weights", best, "--format", "onnx")),
    ):  # fmt: skip
        r[name] = check.run_quiet(f"train: {name}", cmd, 120, ("speed", "mAP", " all ", "max |", "pycocotools"))
    r["ok"] = all(r[k]["ok"] for k in ("data", "train", "val", "predict", "export")) and (check.cpu or r["loss_fell"])
    if check.cpu:
        r["note"] = "CPU mode: 2 short epochs; the loss is reported, not required to fall"
    return r


def peer(check: Check) -> dict[str, Any]:
    out = check.out / "peer.json"
    size = ["--imgsz", "64", "--batch", "2", "--device", "cpu", "--repeats", "2", "--warmup", "1"] if check.cpu else [
        "--imgsz", "640", "--batch", "64", "--device", "0", "--repeats", "5", "--warmup", "2"]  # fmt: skip
    cmd = [sys.executable, "benchmarks/yolov5_peer.py", *size, "--out", str(out)]
    r = check.run_quiet("peer", cmd, 90 if check.cpu else 150)
    r["result"] = json.loads(out.read_text()) if out.is_file() else None
    if r["rc"] == 3:  # the package is not installed: say so, do not fail
        r["ok"], r["skipped"] = None, (r["result"] or {}).get("skipped", "yolov5 not installed")
        r.pop("error", None)
    return r


def packaged(model: str) -> bool:
    try:
        return (importlib.resources.files("gmyolo.cfg.models") / f"{model}.yaml").is_file()
    except ModuleNotFoundError:
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.environ.get("OUT") or "runs/gpu_check", help="folder for JSON and log")
    parser.add_argument("--cpu", action="store_true", help="the tiny CPU mode (no GPU needed; CI)")
    parser.add_argument("--budget", type=float, default=None, help="seconds in all (default: 450 GPU, 115 CPU)")
    args = parser.parse_args()
    check = Check(Path(args.out).resolve(), args.cpu, args.budget or (115 if args.cpu else 450))
    steps = check.result["steps"]
    check.result["environment"] = environment(check)
    if not args.cpu and not check.result["environment"].get("gpu"):
        check.say("no CUDA GPU found: run with --cpu for the CPU mode")
        check.result["ok"] = False
        write(check)
        return 2
    steps["cuda_tests"] = cuda_tests(check)
    models = ["yolov5n-gmf-nano"] if args.cpu else ["yolov5s", "yolov5s-gmf-t"]
    steps["bench"] = {m: bench(check, m) for m in models}
    steps["train"] = train(check)
    steps["peer"] = peer(check)
    if not args.cpu and packaged(AFREE_MODEL):  # last: the newest head, measured if the budget allows
        steps["bench"][AFREE_MODEL] = bench(check, AFREE_MODEL)
    failed = [name for name, ok in step_status(steps) if ok is False]
    check.result["failed"] = failed
    check.result["ok"] = not failed
    check.result["seconds"] = round(time.monotonic() - check.t0, 1)
    check.say(f"{'passed' if not failed else 'FAILED: ' + ', '.join(failed)} in {check.result['seconds']} s; "
              f"{check.out / 'gpu_check.json'}")  # fmt: skip
    write(check)
    return 0 if not failed else 1


def step_status(steps: dict[str, Any]):
    for name, step in steps.items():
        if name == "bench":
            for model, r in step.items():
                yield f"bench {model}", r.get("ok")
        else:
            yield name, step.get("ok")


def write(check: Check) -> None:
    (check.out / "gpu_check.json").write_text(json.dumps(check.result, indent=2, default=str))
    check.log.close()


if __name__ == "__main__":
    sys.exit(main())
