"""The detection dataset and its DataLoader: images and boxes in, training or validation batches out.

A batch is ``(images, targets, paths, shapes)``:
- images: B×3×H×W uint8 RGB (the trainer scales to [0, 1] on the device);
- targets: M×6 float32 rows ``[image index in batch, class, cx, cy, w, h]``, box normalised to H×W;
- paths: the image files; shapes: per image ``((h0, w0), ((scale_h, scale_w), (pad_w, pad_h)))`` to map
  predictions back to original pixels (None for mosaics).

With ``segments=True`` (instance segmentation) a batch also holds ``masks``: B×(H/4)×(W/4) int32 for training
(the prototypes' size), B×H×W for validation (mask IoU against the outlines at the input's size, not at a quarter of
it), in each image value j + 1 where its j-th target lies (targets ordered largest first, so a smaller object
overlapping a larger one is on top: Ultralytics' ``overlap_mask``), made from the outlines after augmentation
(:func:`collate_segments`).
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import multiprocessing.util
import os
import signal
import threading
from collections.abc import Callable, Mapping

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from .augment import (
    AUGMENT_DEFAULTS,
    Instances,
    augment_hsv,
    letterbox,
    mixup,
    polygons_to_masks,
    random_affine,
    xyxy_to_xywhn,
)
from .config import DatasetConfig, DatasetError, list_images
from .labels import ImageRecord, LabelSummary, load_labels
from .opencv import cv2, imread

__all__ = [
    "YOLODataset",
    "EpochState",
    "collate_fn",
    "collate_segments",
    "create_dataset",
    "build_dataloader",
    "default_workers",
    "cpu_cores",
]

LOGGER = logging.getLogger("gmyolo")
MAX_WORKERS = 8  # YOLOv5's and Ultralytics' default per process
MASK_DOWNSAMPLE = 4  # training masks at 1/4 of the image size (the prototypes'), as YOLOv5-seg and Ultralytics


class EpochState:
    """Small integers a dataset changes between epochs (the epoch, mosaic on/off), in shared memory.

    DataLoader workers are persistent: they start once and hold the dataset object they were given. A
    plain attribute set on the main process's copy would never reach them; these values live in one shared
    tensor that the workers see (forked or spawned), so ``set_epoch`` and ``close_mosaic`` take effect at
    the next epoch without restarting a process. The trainer changes them only between epochs, before the
    loader is iterated again, so no batch sees a half-changed state.
    """

    def __init__(self, **values: int):
        self.names = tuple(values)
        self.values = torch.tensor([int(v) for v in values.values()], dtype=torch.int64).share_memory_()

    def __getitem__(self, name: str) -> int:
        return int(self.values[self.names.index(name)])

    def __setitem__(self, name: str, value: int) -> None:
        self.values[self.names.index(name)] = int(value)


class YOLODataset(Dataset):
    """Images with YOLO labels; mosaic/affine/HSV/flip/mixup augmentation when ``augment``.

    Args:
        records: checked images and labels (:func:`gmyolo.data.labels.load_labels`).
        imgsz: training size (square), or the long side for rectangular batches.
        augment: apply the training augmentations in ``hyp``.
        rect: rectangular batches (validation): images sorted by aspect ratio, each batch padded to
            the smallest stride multiple that fits it. Use with ``shuffle=False``.
        cache_images: keep decoded, resized images in RAM.
        seed: augmentation of sample i in epoch e depends only on (seed, e, i).
        segments: instance segmentation: objects move with their outlines and each sample also returns its
            mask (see the module's docstring); objects labelled by a box alone are left out (one warning).

    ``epoch`` and ``mosaic`` are shared with the loader's worker processes (:class:`EpochState`).
    """

    def __init__(
        self,
        records: list[ImageRecord],
        imgsz: int = 640,
        augment: bool = False,
        hyp: Mapping[str, float] | None = None,
        rect: bool = False,
        batch_size: int = 16,
        stride: int = 32,
        pad: float = 0.0,
        cache_images: bool = False,
        seed: int = 0,
        segments: bool = False,
    ):
        self.imgsz, self.augment, self.rect, self.stride, self.seed = imgsz, augment, rect, stride, seed
        self.hyp = {**AUGMENT_DEFAULTS, **(hyp or {})}
        self.state = EpochState(epoch=0, mosaic=augment and not rect and self.hyp["mosaic"] > 0)
        self.segments = segments
        self.records = with_outlines_only(records) if segments else list(records)
        self.batch_shapes: np.ndarray | None = None
        if rect:
            self.records, self.batch_shapes = self.rect_batches(self.records, batch_size, imgsz, stride, pad)
        self.cache: list[np.ndarray | None] = [None] * len(self.records)
        if cache_images:
            self.fill_cache()

    def __len__(self) -> int:
        return len(self.records)

    @property
    def epoch(self) -> int:
        return self.state["epoch"]

    @epoch.setter
    def epoch(self, epoch: int) -> None:
        self.state["epoch"] = epoch

    @property
    def mosaic(self) -> bool:
        return bool(self.state["mosaic"])

    @mosaic.setter
    def mosaic(self, on: bool) -> None:
        self.state["mosaic"] = on

    def set_epoch(self, epoch: int) -> None:
        """Augmentation of the next epoch; reaches persistent workers (call before iterating the loader)."""
        self.epoch = epoch

    def close_mosaic(self) -> None:
        """Switch mosaic off (YOLOv5/Ultralytics do so for the last epochs); plain letterboxed images from now."""
        self.mosaic = False

    @staticmethod
    def rect_batches(records, batch_size, imgsz, stride, pad):
        aspect = np.array([r.height / r.width for r in records])
        order = aspect.argsort()
        records, aspect = [records[i] for i in order], aspect[order]
        n_batches = math.ceil(len(records) / batch_size)
        shapes = []
        for b in range(n_batches):
            ar = aspect[b * batch_size : (b + 1) * batch_size]
            lo, hi = ar.min(), ar.max()
            shapes.append([hi, 1] if hi < 1 else [1, 1 / lo] if lo > 1 else [1, 1])
        batch_shapes = np.ceil(np.array(shapes) * imgsz / stride + pad).astype(int) * stride
        return records, batch_shapes.repeat(batch_size, axis=0)[: len(records)]

    def fill_cache(self) -> None:
        nbytes = 0
        for i in range(len(self)):
            self.cache[i] = self.read_resized(i)
            nbytes += self.cache[i].nbytes
        LOGGER.info("cached %d images in RAM (%.1f GB)", len(self), nbytes / 1e9)

    def read_resized(self, i: int) -> np.ndarray:
        """Decode image i (BGR) and resize it so its long side is imgsz."""
        path = self.records[i].image
        im = imread(path)
        if im is None:  # passed the check but cannot be decoded now (changed on disk?)
            raise DatasetError(f"cannot read image {path}")
        h0, w0 = im.shape[:2]
        r = self.imgsz / max(h0, w0)
        if r != 1:
            interp = cv2.INTER_LINEAR if (self.augment or r > 1) else cv2.INTER_AREA
            im = cv2.resize(im, (max(1, round(w0 * r)), max(1, round(h0 * r))), interpolation=interp)
        return im

    def load_image(self, i: int) -> tuple[np.ndarray, tuple[int, int]]:
        im = self.cache[i] if self.cache[i] is not None else self.read_resized(i)
        return im, (self.records[i].height, self.records[i].width)

    def placed(self, i: int, w: float, h: float, padw: float, padh: float) -> Instances:
        """The objects of image i, drawn w×h at (padw, padh)."""
        record = self.records[i]
        return Instances.placed(record.labels, record.segments if self.segments else None, w, h, padw, padh)

    def load_mosaic(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, Instances]:
        """Four images around a random centre on a 2s×2s canvas, then a random affine crop back to s×s."""
        s = self.imgsz
        yc, xc = (int(rng.uniform(s / 2, 3 * s / 2)) for _ in range(2))
        indices = [index, *rng.integers(0, len(self), 3).tolist()]
        canvas = np.full((2 * s, 2 * s, 3), 114, np.uint8)
        parts = []
        for k, i in enumerate(indices):
            im, _ = self.load_image(i)
            h, w = im.shape[:2]
            if k == 0:  # top left
                x1a, y1a, x2a, y2a = max(xc - w, 0), max(yc - h, 0), xc, yc
                x1b, y1b, x2b, y2b = w - (x2a - x1a), h - (y2a - y1a), w, h
            elif k == 1:  # top right
                x1a, y1a, x2a, y2a = xc, max(yc - h, 0), min(xc + w, 2 * s), yc
                x1b, y1b, x2b, y2b = 0, h - (y2a - y1a), min(w, x2a - x1a), h
            elif k == 2:  # bottom left
                x1a, y1a, x2a, y2a = max(xc - w, 0), yc, xc, min(2 * s, yc + h)
                x1b, y1b, x2b, y2b = w - (x2a - x1a), 0, w, min(y2a - y1a, h)
            else:  # bottom right
                x1a, y1a, x2a, y2a = xc, yc, min(xc + w, 2 * s), min(2 * s, yc + h)
                x1b, y1b, x2b, y2b = 0, 0, min(w, x2a - x1a), min(y2a - y1a, h)
            canvas[y1a:y2a, x1a:x2a] = im[y1b:y2b, x1b:x2b]
            parts.append(self.placed(i, w, h, x1a - x1b, y1a - y1b))
        objects = Instances.concat(parts)
        objects.clip(2 * s, 2 * s)  # each tile's crop lies on the canvas's border
        h = self.hyp
        return random_affine(
            canvas,
            objects,
            rng,
            h["degrees"],
            h["translate"],
            h["scale"],
            h["shear"],
            h["perspective"],
            border=(-s // 2, -s // 2),
        )

    def __getitem__(self, index: int):
        epoch, mosaic = self.state.values.tolist()
        rng = np.random.default_rng([self.seed, epoch, index])
        hyp, record = self.hyp, self.records[index]
        shapes = None
        if mosaic and rng.random() < hyp["mosaic"]:
            im, objects = self.load_mosaic(index, rng)
            if rng.random() < hyp["mixup"]:
                im, objects = mixup(im, objects, *self.load_mosaic(int(rng.integers(0, len(self))), rng), rng)
        else:
            im, (h0, w0) = self.load_image(index)
            h, w = im.shape[:2]
            shape = tuple(self.batch_shapes[index]) if self.rect else self.imgsz
            im, r, (padw, padh) = letterbox(im, shape, scaleup=self.augment)
            shapes = (h0, w0), ((h / h0 * r, w / w0 * r), (padw, padh))
            objects = self.placed(index, w * r, h * r, padw, padh)
            if self.augment:
                im, objects = random_affine(
                    im,
                    objects,
                    rng,
                    hyp["degrees"],
                    hyp["translate"],
                    hyp["scale"],
                    hyp["shear"],
                    hyp["perspective"],
                )
        H, W = im.shape[:2]
        xywhn = xyxy_to_xywhn(objects.boxes, W, H)
        if self.augment:
            augment_hsv(im, rng, hyp["hsv_h"], hyp["hsv_s"], hyp["hsv_v"])
            if rng.random() < hyp["flipud"]:
                im = np.flipud(im)
                xywhn[:, 1] = 1 - xywhn[:, 1]
                objects.flip(1, H)
            if rng.random() < hyp["fliplr"]:
                im = np.fliplr(im)
                xywhn[:, 0] = 1 - xywhn[:, 0]
                objects.flip(0, W)
        targets = torch.zeros((len(objects), 6))
        targets[:, 1] = torch.from_numpy(objects.cls)
        targets[:, 2:] = torch.from_numpy(xywhn)
        im = torch.from_numpy(np.ascontiguousarray(im[:, :, ::-1].transpose(2, 0, 1)))  # BGR HWC -> RGB CHW
        if not self.segments:
            return im, targets, str(record.image), shapes
        masks, order = polygons_to_masks(objects.segments, H, W, MASK_DOWNSAMPLE if self.augment else 1)
        return im, targets[torch.from_numpy(order)], str(record.image), shapes, torch.from_numpy(masks)


def collate_fn(batch):
    """Stack images; concatenate targets, writing each row's image index into column 0."""
    images, targets, paths, shapes = zip(*batch)
    for i, t in enumerate(targets):
        t[:, 0] = i
    return torch.stack(images, 0), torch.cat(targets, 0), list(paths), list(shapes)


def collate_segments(batch):
    """:func:`collate_fn`, and the images' masks stacked: B×(H/4)×(W/4)."""
    *rest, masks = zip(*batch)
    return (*collate_fn(list(zip(*rest))), torch.stack(masks, 0))


def with_outlines_only(records: list[ImageRecord]) -> list[ImageRecord]:
    """Segmentation: the records with their objects labelled by a box alone left out (an object needs its
    outline for a mask), with one warning saying how many."""
    out, dropped, files = [], 0, 0
    for r in records:
        has = [i for i, p in enumerate(r.segments) if len(p)]
        if len(has) < len(r.labels):
            dropped += len(r.labels) - len(has)
            files += 1
            r = ImageRecord(r.image, r.height, r.width, r.labels[has], [r.segments[i] for i in has])
        out.append(r)
    if dropped:
        LOGGER.warning(
            "segmentation: %d objects in %d label files have a box but no outline (polygon); they are left out",
            dropped,
            files,
        )
    return out


def create_dataset(
    data: DatasetConfig,
    split: str,
    imgsz: int = 640,
    augment: bool = False,
    hyp: Mapping[str, float] | None = None,
    rect: bool = False,
    batch_size: int = 16,
    stride: int = 32,
    cache_images: bool = False,
    seed: int = 0,
    segments: bool = False,
) -> tuple[YOLODataset, LabelSummary]:
    """The dataset of one split of a loaded dataset YAML, with its labels checked (or read from cache)."""
    if split not in data.splits:
        raise DatasetError(f"{data.yaml_file or 'dataset'}: no '{split}' split")
    images = list_images(data.splits[split])
    records, summary = load_labels(images, data.nc, prefix=split)
    dataset = YOLODataset(
        records,
        imgsz,
        augment,
        hyp,
        rect,
        batch_size,
        stride,
        pad=0.5 if rect else 0.0,
        cache_images=cache_images,
        seed=seed,
        segments=segments,
    )
    return dataset, summary


def seed_worker(worker_id: int) -> None:
    """Per worker: one OpenCV thread (workers are the parallelism; more threads only contend with the
    training process), numpy/random seeded from torch's per-worker seed, and Ctrl-C and SIGTERM left to the
    main process (:func:`leave_stop_signals_to_the_main_process`)."""
    import random

    leave_stop_signals_to_the_main_process()
    cv2.setNumThreads(0)
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def leave_stop_signals_to_the_main_process() -> None:
    """In a loader worker: SIGINT and SIGTERM are ignored, left to the main process.

    Ctrl-C, ``timeout``, ``kill -- -PGID``, SLURM and systemd signal every process of the job, the workers too. A
    worker that died of it would make torch's SIGCHLD handler raise ``DataLoader worker (pid N) is killed by
    signal`` in the main process, wherever it was (inside ``torch.save`` of a checkpoint, say), and leave the main
    process without the batches of the step it is finishing. The main process, once stopping, shuts its loaders
    down itself; at exit, :func:`_end_loader_workers_at_exit` ends any left. SIGKILL ends a worker as ever.
    """
    if threading.current_thread() is threading.main_thread():  # dispositions are set from the main thread only
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)


def _end_loader_workers_at_exit() -> None:
    """At exit (of this process, or of a multiprocessing child), before multiprocessing terminate()s its daemonic
    children with SIGTERM and join()s them, which workers ignoring SIGTERM would never survive: SIGKILL the workers
    of every DataLoader iterator still alive (a loader at module level, one held by a traceback), first taking them
    off torch's SIGCHLD watch. The trainer shuts its loaders down before this, in the ordinary way."""
    if not multiprocessing.active_children():
        return
    import gc

    from torch.utils.data._utils import signal_handling
    from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter

    # type(o), not isinstance: isinstance reads o.__class__, which some lazy objects answer with a FutureWarning
    for iterator in [o for o in gc.get_objects() if issubclass(type(o), _MultiProcessingDataLoaderIter)]:
        if getattr(iterator, "_worker_pids_set", False):
            signal_handling._remove_worker_pids(id(iterator))  # no "worker killed by signal" error for these
            iterator._worker_pids_set = False
        for worker in getattr(iterator, "_workers", ()):
            if worker.is_alive():
                worker.kill()
                worker.join(5)


def _register_exit_hook(*_) -> None:
    # A finalizer multiprocessing runs at exit before it ends its children (atexit in this process; a child's run()
    # end in forked ones, whose finalizers are cleared at the fork: registered again there).
    multiprocessing.util.Finalize(None, _end_loader_workers_at_exit, exitpriority=100)


_register_exit_hook()
multiprocessing.util.register_after_fork(_register_exit_hook, _register_exit_hook)


def cpu_cores() -> int:
    """The CPU cores this process may run on (a container's or taskset's share, not the whole machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def default_workers(batch_size: int, processes: int | None = None) -> int:
    """YOLOv5's number of loader workers: min(8, CPU cores / training processes on this machine, batch).

    ``processes`` defaults to torchrun's LOCAL_WORLD_SIZE (1 outside torchrun): with 8 GPUs on a 64-core
    machine each process gets 8 workers, on this project's 2-core machine a single process gets 2.
    """
    processes = processes or int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(0, min(MAX_WORKERS, cpu_cores() // max(processes, 1), batch_size))


def build_dataloader(
    dataset: Dataset,
    batch_size: int,
    workers: int | None = None,
    shuffle: bool = True,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool | None = None,
    collate: Callable = collate_fn,
    drop_last: bool = False,
    prefetch_factor: int = 2,
) -> DataLoader:
    """A DataLoader with persistent worker processes, prefetching, pinned memory for CUDA, seeded shuffling,
    and ``collate`` (detection's by default; classification passes its own).

    Shuffling goes through a ``DistributedSampler``, also in a single process (``world_size`` 1): the
    order of epoch e is a permutation seeded with ``seed + e`` (call ``loader.sampler.set_epoch(e)``),
    and rank r of ``world_size`` takes every ``world_size``-th image of it. So the union of the ranks'
    k-th batches of ``batch_size`` is the k-th batch of ``batch_size * world_size`` of a single process.
    An unshuffled loader (validation) is not split: every image, in order.

    ``workers`` None: :func:`default_workers`; a number is capped at the CPU cores and the batch. Workers
    start with the first epoch and live as long as the loader; each keeps ``prefetch_factor`` batches
    ready. Per-epoch changes to the dataset (``set_epoch``, ``close_mosaic``) reach them through shared
    memory (:class:`EpochState`); a dataset of your own that changes per epoch must do the same. Every
    sample's augmentation depends only on (seed, epoch, index), so any number of workers gives the same
    batches. ``pin_memory`` None: when CUDA is available (pass the training device's ``type == "cuda"``).
    """
    if workers is None:
        workers = default_workers(batch_size)
    workers = max(0, min(workers, cpu_cores(), batch_size))
    sampler = DistributedSampler(dataset, world_size, rank, shuffle=True, seed=seed) if shuffle else None
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        collate_fn=collate,
        worker_init_fn=seed_worker,
        generator=generator,
        drop_last=drop_last,
        persistent_workers=workers > 0,
        prefetch_factor=prefetch_factor if workers > 0 else None,
    )
