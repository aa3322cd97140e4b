#!/usr/bin/env bash
# The prepared GPU check (benchmarks/gpu_check.py says what it runs): the yolov5 pip package as the peer, a
# GroupMixFormer detector against YOLO11n at two sizes, the CUDA tests, 20 epochs of training with val, predict and
# ONNX export, then --compile; one JSON and one log in the output folder.
#
#   benchmarks/gpu_check.sh [--cpu] [--out DIR] [--budget SECONDS]
#
# On a GPU machine: at most 7 minutes (budget 420 s by default), output in $OUT (else runs/gpu_check).
# --cpu: the tiny CPU mode (150 s at most), which CI runs so that this script keeps working.
#
# Packages the machine lacks travel as wheels in .whl/ at the repository root (or $GMYOLO_WHEELS): pycocotools
# and yolov5==7.0.14, fetched where a registry is reachable with
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d .whl pycocotools yolov5==7.0.14
# They are installed into a temporary folder on PYTHONPATH (never into the machine's Python); a wheel that
# does not fit this Python is skipped. gmyolo itself runs from this checkout's src/ unless it is installed.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
WHEELS="${GMYOLO_WHEELS:-.whl}"

if compgen -G "$WHEELS/*.whl" >/dev/null; then
    SITE="$(mktemp -d "${TMPDIR:-/tmp}/gmyolo-gpu-check-site.XXXXXX")"
    for wheel in "$WHEELS"/*.whl; do
        if "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$wheel" \
            >/dev/null 2>&1; then
            echo "[gpu_check] installed $(basename "$wheel") into $SITE"
        else
            echo "[gpu_check] skipped $(basename "$wheel"): it does not install on this Python"
        fi
    done
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! "$PYTHON" -c "import gmyolo" 2>/dev/null; then
    export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
fi
exec "$PYTHON" benchmarks/gpu_check.py "$@"
