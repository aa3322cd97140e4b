"""``gmyolo predict`` / ``YOLO(...).predict()``: detections on images and videos from any weights file.

Per frame: letterbox to the model's size, run the backend (checkpoint, ONNX or TorchScript), NMS (the
end-to-end heads: their top-k, filtered by --conf and --classes), map the
boxes back to original pixels, and optionally write the annotated image/video, YOLO txt labels and one JSON
file per run. Frames are processed one at a time, so a folder of any size streams through in constant memory.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from ...data.augment import letterbox, stride_multiple
from ...data.sources import Frame, iter_frames
from ...engine.device import select_device
from ...engine.precision import compile_backend
from ...engine.runs import increment_path
from ...models.yolo import DetectionModel
from ...utils.files import atomic_write
from .backends import Backend, load_backend
from .options import PredictArgs
from .postprocess import postprocess, scale_boxes
from .results import Results

__all__ = ["PredictArgs", "Predictor", "predict"]

LOGGER = logging.getLogger("gmyolo")


class Predictor:
    """Letterbox → backend → NMS → original pixels, for one frame at a time. A task whose model gives more than
    boxes (segmentation: masks) overrides ``detections`` (the backend's output -> the frame's rows) and
    ``results`` (those rows -> :class:`Results`)."""

    def __init__(self, backend: Backend, args: PredictArgs):
        self.backend, self.args = backend, args
        stride = backend.stride
        if not backend.dynamic_size:  # a fixed-size export takes exactly its own size
            if args.imgsz and backend.imgsz and (args.imgsz, args.imgsz) != backend.imgsz:
                LOGGER.warning("this model was exported for %s px; ignoring --imgsz %d", backend.imgsz, args.imgsz)
            self.imgsz, self.auto = backend.imgsz, False
        else:
            size = args.imgsz or (backend.imgsz[0] if backend.imgsz else 640)
            size = stride_multiple(size, stride)
            self.imgsz, self.auto = (size, size), True  # pad only to a stride multiple, as YOLOv5's detect does
        unknown = [c for c in args.classes or [] if backend.names and c not in backend.names]
        if unknown:
            raise ValueError(f"--classes {unknown}: the model has classes 0..{len(backend.names) - 1}")

    def __call__(self, frame: Frame, keep_image: bool = True) -> Results:
        be = self.backend
        t0 = time.perf_counter()
        im, ratio, pad = letterbox(frame.image, self.imgsz, auto=self.auto, stride=be.stride)
        x = torch.from_numpy(np.ascontiguousarray(im[..., ::-1].transpose(2, 0, 1)))  # BGR HWC -> RGB CHW
        x = x.to(be.device, non_blocking=True).float().div_(255).unsqueeze(0)
        t1 = time.perf_counter()
        out = be(x)
        if be.device.type == "cuda":
            torch.cuda.synchronize(be.device)
        t2 = time.perf_counter()
        det = self.detections(out)
        results = self.results(frame, det, x.shape[2:], ratio, pad, keep_image)
        t3 = time.perf_counter()
        results.speed = {"preprocess": 1e3 * (t1 - t0), "inference": 1e3 * (t2 - t1), "nms": 1e3 * (t3 - t2)}
        return results

    def detections(self, out: Any) -> torch.Tensor:
        """The backend's output for one image -> n×6 rows [x1, y1, x2, y2, score, class] in input pixels."""
        a = self.args
        return postprocess(
            out.float(), self.backend.output_format, a.conf, a.iou, a.classes, a.agnostic_nms, max_det=a.max_det
        )[0]

    def results(
        self, frame: Frame, det: torch.Tensor, size: tuple[int, int], ratio: float, pad: tuple[float, float], keep: bool
    ) -> Results:
        """The frame's detections in original pixels (``size``: the letterboxed input's; ``ratio``, ``pad``: how
        the frame was letterboxed into it)."""
        h0, w0 = frame.image.shape[:2]
        det = det.clone()
        scale_boxes(det[:, :4], (h0, w0), ((ratio, ratio), pad))
        det = det.cpu()
        return Results(
            path=frame.path,
            orig_shape=(h0, w0),
            boxes=det[:, :4],
            scores=det[:, 4],
            classes=det[:, 5].long(),
            names=self.backend.names or {},
            image=frame.image if keep else None,
            frame=frame.frame,
        )


class RunWriter:
    """The run folder: annotated images and videos, labels/*.txt and predictions.json (all written atomically)."""

    def __init__(self, save_dir: Path, args: PredictArgs):
        self.dir, self.args = save_dir, args
        self.videos: dict[str, tuple[cv2.VideoWriter, Path, Path]] = {}
        self.records: list[dict[str, Any]] = []
        self.labels = 0

    def output_name(self, r: Results) -> str:
        stem = Path(r.path).stem if not r.path.startswith("<") else f"image{r.path.split()[-1].rstrip('>')}"
        return stem if r.frame is None else f"{stem}_{r.frame}"

    def add(self, r: Results, fps: float | None) -> None:
        a = self.args
        plot = {"line_width": a.line_width, "labels": not a.hide_labels, "conf": not a.hide_conf}
        if a.save and r.frame is None:
            suffix = Path(r.path).suffix if Path(r.path).suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp") else ".jpg"
            r.save(self.dir / f"{self.output_name(r)}{suffix}", **plot)
        elif a.save:
            self.video_frame(r, fps or 30.0, r.plot(**plot))
        if a.save_txt:
            (self.dir / "labels").mkdir(exist_ok=True)
            r.save_txt(self.dir / "labels" / f"{self.output_name(r)}.txt", a.save_conf)
            self.labels += 1
        if a.save_json:
            self.records.append(r.to_dict())

    def video_frame(self, r: Results, fps: float, image: np.ndarray) -> None:
        if r.path not in self.videos:
            for writer, tmp, final in self.videos.values():  # videos arrive one after another: finish the last
                self.finish_video(writer, tmp, final)
            self.videos.clear()
            final = self.dir / f"{Path(r.path).stem}.mp4"
            tmp = final.with_name(f".{final.stem}.partial.mp4")  # renamed when complete, never half a video
            h, w = image.shape[:2]
            writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
            if not writer.isOpened():
                raise OSError(f"cannot write a video to {tmp} (OpenCV has no mp4v encoder here); use --nosave")
            self.videos[r.path] = (writer, tmp, final)
        self.videos[r.path][0].write(image)

    @staticmethod
    def finish_video(writer: cv2.VideoWriter, tmp: Path, final: Path) -> None:
        writer.release()
        os.replace(tmp, final)

    def close(self, interrupted: bool = False) -> None:
        for writer, tmp, final in self.videos.values():
            if interrupted:  # an unfinished video is not kept
                writer.release()
                tmp.unlink(missing_ok=True)
            else:
                self.finish_video(writer, tmp, final)
        self.videos.clear()
        if self.args.save_json:
            atomic_write(self.dir / "predictions.json", json.dumps(self.records, indent=1))


def predict(
    args: PredictArgs,
    model: Backend | DetectionModel | None = None,
    stream: bool = True,
    keep_images: bool = True,
    verbose: bool = True,
) -> Iterator[Results]:
    """Yield :class:`Results` per readable frame of ``args.source``; unreadable files are reported and skipped.

    ``model`` (a DetectionModel or backend in memory) replaces ``args.weights``. Files are written to a run
    folder under ``args.project`` when any of save / save_txt / save_json is set.
    """
    args.check()
    backend = model if isinstance(model, Backend) else load_backend(model or args.weights, select_device(args.device))
    backend = compile_backend(backend, args.compile)
    from .. import predictor_for  # the head's task: detection, or segmentation (masks)

    predictor = predictor_for(backend.output_format)(backend, args)
    frames = iter_frames(args.source, args.vid_stride)  # raises now for a missing source, before any folder is made
    first = next(frames, None)
    writer = None
    if args.save or args.save_txt or args.save_json:
        save_dir = increment_path(Path(args.project) / args.name, args.exist_ok)
        save_dir.mkdir(parents=True, exist_ok=True)
        writer = RunWriter(save_dir, args)
    skipped, seen, totals = [], 0, np.zeros(3)
    interrupted = True
    try:
        frame = first
        while frame is not None:
            if frame.image is None:
                LOGGER.warning("skipping %s: %s", frame.path, frame.error)
                skipped.append(frame.path)
            else:
                r = predictor(frame, keep_image=keep_images or (writer is not None and args.save))
                seen += 1
                totals += [r.speed["preprocess"], r.speed["inference"], r.speed["nms"]]
                if verbose:
                    where = r.path if r.frame is None else f"{r.path} frame {r.frame + 1}/{frame.frames or '?'}"
                    LOGGER.info("%s: %dx%d %s, %.1f ms", where, *r.orig_shape, r.summary(), r.speed["inference"])
                if writer is not None:
                    writer.add(r, frame.fps)
                if not keep_images:
                    r.image = None
                yield r
            frame = next(frames, None)
        interrupted = False
    finally:
        if writer is not None:
            writer.close(interrupted)
    if verbose and seen:
        pre, inf, nms = totals / seen
        h, w = predictor.imgsz
        LOGGER.info(
            "speed per image: %.1f ms preprocess, %.1f ms inference, %.1f ms NMS at up to %dx%d (%s)",
            pre, inf, nms, h, w, backend.kind,
        )  # fmt: skip
    if skipped:
        LOGGER.warning("%d file(s) could not be read and were skipped (first: %s)", len(skipped), skipped[0])
    if not seen and not skipped:
        LOGGER.warning("the source %s yielded no images", args.source)
    if writer is not None and verbose:
        extra = f", {writer.labels} label files in {writer.dir / 'labels'}" if args.save_txt else ""
        LOGGER.info("results saved to %s%s", writer.dir, extra)
