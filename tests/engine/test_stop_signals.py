"""SIGTERM to a training run's whole process group — what SLURM (scancel, the time limit), `timeout`,
`kill -- -PGID` and systemd send: the main process and its loader workers alike.

The run ends the step or checkpoint in hand, shuts its loaders down, and exits 130 with the command that resumes
it: no traceback, no "Exception ignored" from the loaders' workers, a whole ``last.pt`` and no temp file; resumed,
it ends bit for bit as an uninterrupted run. SIGKILL after the grace period (or a second SIGTERM) still leaves
a whole ``last.pt``. For detection and classification, which share the trainer, and for DDP ranks under torchrun.

Each run is the real command in a process group of its own (``signal_group_when_seen`` in conftest.py), started
through a small runner that pauses at one point — a training step, a validation, the write of ``last.pt`` — and
says so on stderr: the test signals the group then, and the pause lasts until the signal has arrived.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from test_faults import assert_same_training_state, read_rows, temp_files
from torch.utils.data import default_collate

from gmyolo.data.classify import make_classify_dataset
from gmyolo.data.dataset import build_dataloader
from gmyolo.data.synth import make_synthetic_dataset
from gmyolo.engine.faults import shut_down_loader_workers

RUNNER = '''
"""`gmyolo ARGS` pausing once where PAUSE_AT says (step:N, validate:N or save:N, the N-th call, saves of last.pt
counted), after printing "PAUSE <where>" on stderr: until PAUSE_SIGNALS stop signals have arrived, then PAUSE_AFTER
seconds more. Also a plugin file (GMYOLO_PLUGINS): torchrun's ranks pause the same way. LAUNCH_NPROC: what
`--device 0,1` does, with that many CPU ranks."""
import os, sys, time

from gmyolo.engine import faults
from gmyolo.engine.trainer import Trainer
from gmyolo.models.groupmixformer import VARIANTS
from gmyolo.tasks.classify.train import ClassificationTrainer
from gmyolo.tasks.detect.train import DetectionTrainer

VARIANTS["pico"] = {pico!r}
WHERE, _, NTH = os.environ["PAUSE_AT"].partition(":")
WANT, AFTER = int(os.environ.get("PAUSE_SIGNALS", "1")), float(os.environ.get("PAUSE_AFTER", "0"))
calls, received = [0], []


def pause(where):
    calls[0] += 1
    if where != WHERE or calls[0] != int(NTH):
        return
    print(f"PAUSE {{where}}", file=sys.stderr, flush=True)
    deadline = time.monotonic() + 120
    while len(received) < WANT and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(AFTER)


def handle(self, signum, frame, real=faults.GracefulInterrupt.handle):
    received.append(signum)
    return real(self, signum, frame)


def wrap(cls, name, where, before=True):
    real = getattr(cls, name)

    def hooked(*args, **kwargs):
        if before:
            pause(where)
        out = real(*args, **kwargs)
        if not before:
            pause(where)
        return out

    setattr(cls, name, hooked)


faults.GracefulInterrupt.handle = handle
if WHERE == "step":
    wrap(Trainer, "loss_over_ranks", "step")  # between the forward and the backward of a step
elif WHERE == "validate":
    for cls in (DetectionTrainer, ClassificationTrainer):
        wrap(cls, "validate", "validate")
elif WHERE == "save":
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):  # the atomic write's last step
        if os.path.basename(dst) == "last.pt":  # written and fsynced, not yet renamed over last.pt
            pause("save")
        return real_replace(src, dst, *args, **kwargs)

    os.replace = replace

if __name__ == "__main__":
    if os.environ.get("LAUNCH_NPROC"):
        import functools

        from gmyolo.engine import trainer

        trainer.launch_needed = lambda device: True
        trainer.launch = functools.partial(trainer.launch, nproc=int(os.environ["LAUNCH_NPROC"]))
    from gmyolo.cli.main import main

    sys.exit(main(sys.argv[1:]))
'''
# The tiny classifier of the classification tests; detection: what test_faults.py trains.
PICO = dict(embedding_dims=(20, 20, 40, 40), serial_depths=(1, 1, 1, 1), mlp_ratios=(2, 2, 2, 2), drop_path_rate=0.0)
DETECT = ["train", "--model", "yolov5n-gmf-nano", "--imgsz", "64", "--batch", "8", "--nbs", "8", "--epochs", "2"]
DETECT += ["--device", "cpu", "--no-plots", "--no-tensorboard", "--noautoanchor"]
CLASSIFY = ["classify", "train", "--model", "pico", "--imgsz", "32", "--batch", "8", "--epochs", "2", "--ema"]
CLASSIFY += ["--device", "cpu", "--no-plots", "--no-tensorboard", "--mixup", "0", "--cutmix", "0", "--lr", "1.0"]
CLASSIFY += ["--warmup-epochs", "0.5"]
STEPS = {"train": 2, "classify": 6}  # training steps an epoch: 16 images, and 3 classes of 16, in batches of 8
WALL_TIMES = ("time/epoch_s",)  # results.csv columns that differ between any two runs
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread: the same arithmetic in every run


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    detect = make_synthetic_dataset(root / "synth", seed=0, n_train=16, n_val=8, imgsz=96)
    classify = make_classify_dataset(root / "shapes", n_train=16, n_val=4, imgsz=40, seed=0)
    return {"train": str(detect), "classify": str(classify)}


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    path = tmp_path_factory.mktemp("runner") / "gmyolo_pausing.py"
    path.write_text(textwrap.dedent(RUNNER.format(pico=PICO)))
    return path


def command(runner, task: str, data: dict, project, *extra: str) -> list[str]:
    base = DETECT if task == "train" else CLASSIFY
    return [sys.executable, str(runner), *base, "--data", data[task], "--project", str(project), *extra]


@pytest.fixture(scope="module")
def straight(runner, data, tmp_path_factory):
    """An uninterrupted run per task (no pause; no loader workers: the batches do not depend on them), started by
    the first test that asks, beside its own run: ``straight(task)`` -> a function that waits for it and returns its
    run folder."""
    root = tmp_path_factory.mktemp("straight")
    procs = {}

    def start(task: str):
        log = root / f"{task}.log"
        if task not in procs:
            argv = command(runner, task, data, root / task, "--workers", "0")
            with open(log, "wb") as f:
                procs[task] = subprocess.Popen(argv, env={**ENV, "PAUSE_AT": "none:0"}, cwd=root, stdout=f, stderr=f)

        def finish():
            assert procs[task].wait(timeout=300) == 0, log.read_text(errors="replace")[-3000:]
            return root / task / "exp"

        return finish

    yield start
    for proc in procs.values():
        proc.kill()
        proc.wait()


def resume_line(task: str, last) -> str:
    name = "gmyolo train" if task == "train" else "gmyolo classify train"
    return f"{name}: interrupted; {last} holds epoch 1; continue with: {name} --resume {last}"


def assert_stopped_cleanly(code, stderr: bytes, task: str, last) -> str:
    text = stderr.decode(errors="replace")
    assert code == 130, text[-3000:]
    assert text.strip().splitlines()[-1] == resume_line(task, last), text[-3000:]
    assert "Traceback" not in text and "Exception ignored" not in text and "RuntimeError" not in text, text[-3000:]
    return text


# ---- the loader workers -------------------------------------------------------------------------
def test_loader_workers_leave_stop_signals_to_the_main_process():
    loader = build_dataloader(list(range(40)), 2, workers=2, shuffle=False, pin_memory=False, collate=default_collate)
    batches = iter(loader)
    first = next(batches).tolist() + next(batches).tolist()  # one from each worker: both have started
    workers = list(batches._workers)
    assert len(workers) == 2
    # From anyone but the main process (`kill -- -PGID`, SLURM, Ctrl-C's SIGINT): let go; the batches go on.
    for sig in ("-TERM", "-INT"):
        subprocess.run(["kill", sig, *(str(w.pid) for w in workers)], check=True)
    time.sleep(0.5)
    assert all(w.is_alive() for w in workers)
    assert first + [x for batch in batches for x in batch.tolist()] == list(range(40))
    shut_down_loader_workers(loader)  # what the trainer does once stopping
    assert [w.exitcode for w in workers] == [0, 0] and loader._iterator is None


EXIT_WITH_WORKERS = """
import multiprocessing, sys
from gmyolo.data.dataset import build_dataloader
from torch.utils.data import default_collate


def load():
    global batches
    loader = build_dataloader(list(range(40)), 2, workers=2, shuffle=False, pin_memory=False, collate=default_collate)
    batches = iter(loader)
    next(batches)
    next(batches)


if sys.argv[1] == "child":  # a multiprocessing child, which ends its own children when its run() returns
    child = multiprocessing.get_context("fork").Process(target=load)
    child.start()
    child.join()
    sys.exit(child.exitcode)
load()
"""


@pytest.mark.parametrize("where", ["main", "child"])
def test_exit_still_ends_running_workers(where):
    # Workers ignore SIGTERM, and multiprocessing ends a process's children at exit with SIGTERM, then waits for
    # them. Here they are still running (a loader at module level): gmyolo ends them first, or the exit would hang.
    proc = subprocess.Popen([sys.executable, "-c", EXIT_WITH_WORKERS, where], env=ENV, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)  # fmt: skip
    try:
        _, stderr = proc.communicate(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):  # what a hang leaves: the process and its workers
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == 0, stderr[-3000:]
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr[-3000:]


# ---- one process --------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("task", ["train", "classify"], ids=["detect", "classify"])
@pytest.mark.parametrize(
    "pause_at",
    [
        "step",  # epoch 2's first step: both loaders' workers are running
        "validate:2",  # epoch 2's validation
        "save:1",  # epoch 1's last.pt, written and not yet renamed into place
    ],
    ids=["mid-step", "validating", "saving"],
)
def test_sigterm_to_the_group_stops_cleanly_then_resumes_bit_exactly(
    task, pause_at, runner, data, straight, tmp_path, signal_group_when_seen
):
    uninterrupted = straight(task)
    pause_at = f"step:{STEPS[task] + 1}" if pause_at == "step" else pause_at
    argv = command(runner, task, data, tmp_path / "run", "--workers", "2")
    code, stderr, left = signal_group_when_seen(argv, b"PAUSE", {**ENV, "PAUSE_AT": pause_at}, tmp_path)
    run = tmp_path / "run/exp"
    last = run / "weights/last.pt"
    text = assert_stopped_cleanly(code, stderr, task, last)
    assert not left  # the workers ended with the run
    if pause_at.startswith(("step", "save")):  # finished first; a validation is not
        what = "the training step" if pause_at.startswith("step") else "the checkpoint being written"
        assert f"SIGTERM: finishing {what}, then stopping" in text
    assert torch.load(last, weights_only=True)["epoch"] == 0 and not temp_files(tmp_path)
    assert [r["epoch"] for r in read_rows(run / "results.csv")] == ["1"]

    base = [sys.executable, str(runner), *(["classify"] if task == "classify" else []), "train"]
    resumed = subprocess.run([*base, "--resume", str(last)], env={**ENV, "PAUSE_AT": "none:0"}, cwd=tmp_path,
                             capture_output=True, text=True, timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    uninterrupted = uninterrupted()
    assert_same_training_state(
        torch.load(uninterrupted / "weights/last.pt", weights_only=True), torch.load(last, weights_only=True)
    )
    assert read_rows(run / "results.csv", WALL_TIMES) == read_rows(uninterrupted / "results.csv", WALL_TIMES)


@pytest.mark.slow
@pytest.mark.parametrize("second", [signal.SIGKILL, signal.SIGTERM], ids=["then-sigkill", "then-sigterm"])
def test_a_second_signal_during_the_checkpoint_leaves_last_pt_whole(
    second, runner, data, tmp_path, signal_group_when_seen
):
    # SIGTERM while epoch 2's last.pt is written, then half a second later the scheduler's SIGKILL (the end of its
    # grace period: the run dies, epoch 1's last.pt stays), or a second SIGTERM (held too: epoch 2's is finished).
    killed = second == signal.SIGKILL
    pause = {"PAUSE_AT": "save:2", "PAUSE_SIGNALS": "1" if killed else "2", "PAUSE_AFTER": "60" if killed else "0"}
    argv = command(runner, "train", data, tmp_path / "run", "--workers", "2")
    signals = ((signal.SIGTERM, 0), (second, 0.5))
    code, stderr, _ = signal_group_when_seen(argv, b"PAUSE", {**ENV, **pause}, tmp_path, signals=signals)
    text = stderr.decode(errors="replace")
    last = tmp_path / "run/exp/weights/last.pt"
    assert "Traceback" not in text, text[-3000:]
    if killed:
        assert code == -signal.SIGKILL, text[-3000:]
        assert torch.load(last, weights_only=True)["epoch"] == 0  # whole: the previous one
        assert temp_files(tmp_path)  # epoch 2's, never renamed into place (a resume removes it)
    else:
        assert code == 130, text[-3000:]
        assert torch.load(last, weights_only=True)["epoch"] == 1 and not temp_files(tmp_path)
        assert text.strip().splitlines()[-1].endswith(f"holds epoch 2; continue with: gmyolo train --resume {last}")


# ---- DDP: every rank alike ----------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize(
    "pause_at",
    [
        "step:3",  # every rank in epoch 2's first step (2 steps an epoch: 4 images a rank and step)
        "validate:1",  # rank 0 validating epoch 1, the other rank waiting for its word
    ],
    ids=["mid-step", "validating"],
)
def test_sigterm_to_the_group_stops_every_rank(pause_at, runner, data, tmp_path, signal_group_when_seen):
    # What `gmyolo train --device 0,1` runs (gmyolo, torchrun, 2 ranks and their loader workers), on the CPU; the
    # whole group signalled, as SLURM or `timeout` do. The ranks agree where to stop (the end of the step in hand;
    # the end of the epoch rank 0 was validating), rank 0 saves, all exit 130; torchrun and gmyolo after them.
    env = {**ENV, "PAUSE_AT": pause_at, "LAUNCH_NPROC": "2", "GMYOLO_PLUGINS": str(runner)}
    argv = command(runner, "train", data, tmp_path / "run", "--workers", "1")
    code, stderr, left = signal_group_when_seen(argv, b"PAUSE", env, tmp_path)
    last = tmp_path / "run/exp/weights/last.pt"
    text = stderr.decode(errors="replace")
    assert code == 130 and not left, text[-3000:]
    expected = f"gmyolo train: interrupted; {last} holds epoch 1; continue with: the same command and --resume {last}"
    assert text.strip().splitlines()[-1] == expected, text[-3000:]
    assert "Traceback" not in text and "Exception ignored" not in text and "RuntimeError" not in text, text[-3000:]
    assert "gmyolo train: interrupted" not in text.strip().splitlines()[-2]  # once, from the launcher
    assert torch.load(last, weights_only=True)["epoch"] == 0 and not temp_files(tmp_path)
    assert [r["epoch"] for r in read_rows(tmp_path / "run/exp/results.csv")] == ["1"]
