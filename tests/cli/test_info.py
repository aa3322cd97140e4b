"""`gmyolo info`: tables, JSON, errors, and the installed entry point."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from gmyolo.cli.main import main
from gmyolo.models.groupmixformer import groupmixformer

SPEC_PARAMS = {"m": 5_733_120, "t": 10_949_152, "s": 22_421_320, "b": 45_827_272, "l": 71_833_648}


def run_json(capsys, *argv):
    assert main(["info", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("variant", list(SPEC_PARAMS))
def test_info_reports_spec_parameters(capsys, variant):
    summary = run_json(capsys, "--model", f"groupmixformer-{variant}", "--imgsz", "224")
    assert summary["params"] == SPEC_PARAMS[variant]
    assert sum(s["params"] for s in summary["stages"]) == SPEC_PARAMS[variant]


def test_info_shapes_match_a_real_forward(capsys):
    summary = run_json(capsys, "--model", "m", "--imgsz", "97", "131", "--features")
    model = groupmixformer("m", features_only=True).eval()
    with torch.no_grad():
        maps = model(torch.zeros(1, 3, 97, 131))
    stages = [s for s in summary["stages"] if s["name"].startswith("stage")]
    assert [s["output_shape"] for s in stages] == [list(m.shape) for m in maps]
    assert [s["stride"] for s in stages] == [4, 8, 16, 32]


def test_info_table(capsys):
    assert main(["info", "--model", "m", "--imgsz", "224"]) == 0
    out = capsys.readouterr().out
    assert "stage2" in out and "1x160x14x14" in out and "5,733,120" in out and "MACs 1.333 G" in out


def test_info_loads_weights(capsys, tmp_path):
    torch.save({"model": groupmixformer("m").state_dict()}, tmp_path / "m.pth")
    assert main(["info", "--model", "m", "--weights", str(tmp_path / "m.pth"), "--json"]) == 0
    assert main(["info", "--model", "t", "--weights", str(tmp_path / "m.pth")]) == 2
    err = capsys.readouterr().err
    assert "GroupMixFormer-M" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "argv, message",
    [(["--model", "groupmixformer-x"], "unknown GroupMixFormer variant"), (["--imgsz", "1", "2", "3"], "--imgsz")],
)
def test_info_errors_are_one_line(capsys, argv, message):
    assert main(["info", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_module_entry_point():
    result = subprocess.run(
        [sys.executable, "-m", "gmyolo", "info", "--model", "m", "--json"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["params"] == SPEC_PARAMS["m"]


def test_info_on_a_detector_yaml(capsys):
    """The check people run on a new config: layer table, totals, GFLOPs, output shapes."""
    assert main(["info", "--model", "yolov5s-gmf-t.yaml", "--imgsz", "640"]) == 0
    out = capsys.readouterr().out
    assert "GroupMixFormer" in out and "map 2 of layer 0" in out and "Detect" in out
    assert "parameters 14,037,189" in out and "GFLOPs" in out
    assert "decoded (1, 25200, 85)" in out and "(1, 3, 20, 20, 85)" in out


def test_info_detector_json(capsys):
    summary = run_json(capsys, "--model", "yolov5n", "--imgsz", "320", "--nc", "3")
    assert summary["nc"] == 3 and summary["strides"] == [8, 16, 32]
    assert summary["output_shapes"]["decoded"] == [1, 3 * (40 * 40 + 20 * 20 + 10 * 10), 8]
    assert [row["index"] for row in summary["layers"]] == list(range(25))


def test_info_detector_bad_yaml(capsys, tmp_path):
    (tmp_path / "bad.yaml").write_text("nc: 2\nbackbone:\n  [[-1, 1, Conv, [width, 3, 2]]]\nhead: []\n")
    assert main(["info", "--model", str(tmp_path / "bad.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert "line 3" in err and "output width" in err and len(err.splitlines()) == 1


# GFLOPs at 640 as `gmyolo info` counts them (torch's FlopCounterMode: convolutions and matrix products of the
# unfused model). Ultralytics' summaries give 6.6 / 6.1 / 8.9 (its counter adds the BatchNorms; 6.5 / 8.7 fused).
INFO_GFLOPS = {"yolo11n": 6.54, "yolo26n": 6.08, "yolov8n": 8.74}


@pytest.mark.parametrize("name", list(INFO_GFLOPS))
def test_info_on_ultralytics_yamls(capsys, name):
    summary = run_json(capsys, "--model", name)
    assert summary["scale"] == "n" and summary["gflops"] == pytest.approx(INFO_GFLOPS[name], abs=0.01)
    n = 80 * 80 + 40 * 40 + 20 * 20
    if name == "yolo26n":  # end-to-end: the top 300 detections, no NMS
        assert summary["output_format"] == "xyxy_score_class" and summary["output_shapes"]["decoded"] == [1, 300, 6]
    else:
        assert summary["output_format"] == "xywh_cls" and summary["output_shapes"]["decoded"] == [1, n, 84]
        assert summary["output_shapes"]["raw"] == {"boxes": [1, 64, n], "scores": [1, 80, n]}


def test_info_scale_argument_and_table(capsys):
    assert main(["info", "--model", "yolo11", "--scale", "s"]) == 0
    out = capsys.readouterr().out
    assert "scale s" in out and "parameters 9,458,752" in out and "C2PSA" in out
    assert "class scores (no objectness); NMS follows" in out
    assert main(["info", "--model", "yolo11n", "--scale", "q"]) == 2
    err = capsys.readouterr().err.strip()
    assert "scale 'q' is not one of the file's scales" in err and len(err.splitlines()) == 1
