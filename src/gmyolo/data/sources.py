"""Where predictions come from: an image, a folder, a glob, a list file, a video, or arrays in memory.

``iter_frames(source)`` yields one :class:`Frame` at a time — folders and videos are streamed, never
loaded at once. Files that cannot be read are yielded as frames with ``image=None`` and an ``error``,
so the caller can report and skip them without stopping.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import IMG_FORMATS
from .opencv import cv2, imdecode

__all__ = ["Frame", "iter_frames", "VIDEO_FORMATS", "expand_source"]

VIDEO_FORMATS = (".avi", ".m4v", ".mkv", ".mov", ".mp4", ".mpeg", ".mpg", ".webm", ".wmv")


@dataclass
class Frame:
    path: str  # the file (or '<array N>' for in-memory images)
    image: np.ndarray | None  # H×W×3 uint8 BGR; None when unreadable
    frame: int | None = None  # frame index within a video
    frames: int | None = None  # frame count of the video (as the container reports it)
    fps: float | None = None
    error: str | None = None


def expand_source(source: str | os.PathLike) -> list[Path]:
    """The image and video files a source string names, in order (folders: sorted, not recursive)."""
    text = os.path.expanduser(str(source))
    path = Path(text)
    if any(ch in text for ch in "*?[") and not path.exists():
        files = [Path(p) for p in sorted(glob.glob(text, recursive=True)) if Path(p).is_file()]
        if not files:
            raise FileNotFoundError(f"no files match {source}")
        return files
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMG_FORMATS + VIDEO_FORMATS)
        if not files:
            formats = ", ".join(IMG_FORMATS + VIDEO_FORMATS)
            raise FileNotFoundError(f"no images or videos in {path} (formats: {formats})")
        return files
    if path.is_file() and path.suffix.lower() == ".txt":  # a list file: one path per line, relative to the list
        files = []
        for line in path.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                p = Path(os.path.expanduser(line))
                files.append(p if p.is_absolute() else path.parent / p)
        if not files:
            raise FileNotFoundError(f"the list file {path} names no files")
        return files
    if path.is_file():
        return [path]
    raise FileNotFoundError(f"source not found: {source}")


def read_video(path: Path, vid_stride: int = 1) -> Iterator[Frame]:
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        yield Frame(str(path), None, error="cannot open the video")
        return
    frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
    index = 0
    try:
        while True:
            ok, image = cap.read()
            if not ok:
                if index == 0:
                    yield Frame(str(path), None, error="the video has no readable frame")
                break
            if index % vid_stride == 0:
                yield Frame(str(path), image, frame=index, frames=frames, fps=fps / vid_stride)
            index += 1
    finally:
        cap.release()


def read_image(path: Path) -> Frame:
    try:
        data = np.fromfile(path, np.uint8)  # np.fromfile + imdecode also handles non-ASCII paths
    except OSError as e:
        return Frame(str(path), None, error=f"cannot read the file ({e.strerror})")
    image = imdecode(data) if data.size else None
    if image is None:
        return Frame(str(path), None, error="not a readable image")
    return Frame(str(path), image)


def iter_frames(source: str | os.PathLike | np.ndarray | Sequence, vid_stride: int = 1) -> Iterator[Frame]:
    """Frames of ``source``: a path (image, video, folder, glob, .txt list), a BGR array, or a list of either."""
    if isinstance(source, np.ndarray):
        source = [source]
    if isinstance(source, (list, tuple)):
        for i, item in enumerate(source):
            if isinstance(item, np.ndarray):
                if item.ndim != 3 or item.shape[2] != 3 or item.dtype != np.uint8:
                    raise ValueError(f"array {i}: expected an H×W×3 uint8 BGR image, got {item.dtype} {item.shape}")
                yield Frame(f"<array {i}>", item)
            else:
                yield from iter_frames(item, vid_stride)
        return
    for path in expand_source(source):
        if path.suffix.lower() in VIDEO_FORMATS:
            yield from read_video(path, vid_stride)
        else:
            yield read_image(path)
