"""The CPU allocator setting the ``gmyolo`` command runs with (``engine.device.tune_cpu_allocator``)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from gmyolo.cli.main import main

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
PROBE = (
    "from gmyolo.engine.device import cpu_allocator_tuned, tune_cpu_allocator\n"
    "before = cpu_allocator_tuned()\n"
    "print(before, tune_cpu_allocator(), cpu_allocator_tuned())\n"
)


def probe(**env: str) -> str:
    """Run the probe in a fresh interpreter: the setting is process-wide, so never change this test process."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE], env={**os.environ, **env}, capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt only")
def test_allocator_is_tuned_on_glibc_unless_turned_off():
    assert probe(GMYOLO_MALLOC_TUNING="1") == "False True True"  # only after the call, not on import
    assert probe(GMYOLO_MALLOC_TUNING="0") == "False False False"


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt only")
def test_the_command_line_tunes_it_and_bench_says_so(capsys, monkeypatch):
    monkeypatch.setenv("GMYOLO_MALLOC_TUNING", "1")
    args = ["bench", "--model", "groupmixformer-m", "--imgsz", "32", "--batch", "1", "--repeats", "1", "--warmup", "0"]
    assert main([*args, "--threads", "1", "--no-train", "--modes", "fused", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["environment"]["allocator"] == "glibc-tuned"
