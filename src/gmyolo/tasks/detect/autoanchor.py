"""AutoAnchor: how well a model's anchors fit the training labels, and fitting better ones (YOLOv5's method).

Label sizes ``wh`` (n×2, pixels at the training size) and anchors (m×2, pixels) are compared side by side:
a label matches an anchor when neither width nor height differs by more than ``thr`` times (the loss assigns
targets to anchors by the same rule, with ``thr`` = hyp ``anchor_t``, 4.0). Measures:

- anchors per target (APT): matching anchors per label, averaged;
- best possible recall (BPR): the fraction of labels that match at least one anchor;
- fitness: the best side ratio (in (0, 1]) of each label, averaged, counting only matches (what a fit maximises).

Below a BPR of 0.98 new anchors are fitted: k-means of the log label sizes, then an evolutionary refinement of
the fitness (1000 generations of random multiplicative mutations, YOLOv5's settings). They replace the
model's anchors only if they are better.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ...data.labels import ImageRecord
from ...models.yolo import DetectionModel

__all__ = [
    "AnchorCheck",
    "anchor_metrics",
    "anchor_fitness",
    "kmeans",
    "fit_anchors",
    "label_wh",
    "model_anchors",
    "set_anchors",
    "check_anchors",
]

LOGGER = logging.getLogger("gmyolo")
BPR_MIN = 0.98  # refit below this best possible recall
MIN_LABEL_PX = 2.0  # labels smaller than this on both sides are left out of the fit
MAX_FIT_LABELS = 10_000  # larger label sets are subsampled for the fit (fitness then known to about 0.002)


@dataclass
class AnchorCheck:
    """What AutoAnchor found: metrics of the model's anchors and, when it fitted new ones, of those."""

    bpr: float
    apt: float
    anchors: np.ndarray  # m×2 pixels, the anchors the model has afterwards (by level, then anchor)
    fitted_bpr: float | None = None
    fitted_apt: float | None = None
    replaced: bool = False


def _ratios(wh: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """n×m: for every label and anchor, the worse of the two side ratios, each taken <= 1."""
    with np.errstate(divide="ignore"):  # placeholder anchors may have zero sides: ratio 0, never a match
        rw, rh = wh[:, :1] / anchors[:, 0], wh[:, 1:] / anchors[:, 1]
        return np.minimum(np.minimum(rw, 1 / rw), np.minimum(rh, 1 / rh))


def anchor_metrics(wh: np.ndarray, anchors: np.ndarray, thr: float = 4.0) -> tuple[float, float]:
    """(best possible recall, anchors per target) of ``anchors`` (m×2) for label sizes ``wh`` (n×2)."""
    if not len(wh):
        return 0.0, 0.0
    matched = _ratios(wh, anchors) > 1 / thr
    return float(matched.any(1).mean()), float(matched.sum(1).mean())


def anchor_fitness(wh: np.ndarray, anchors: np.ndarray, thr: float = 4.0) -> float:
    """Mean over labels of the best anchor's side ratio, 0 for labels without a match."""
    best = _ratios(wh, anchors).max(1)
    return float((best * (best > 1 / thr)).mean())


def kmeans(x: np.ndarray, k: int, rng: np.random.Generator, iters: int = 30) -> np.ndarray:
    """k centres (k×d) of the points x (n×d, n >= k): k-means++ seeding, then Lloyd iterations."""

    def sq_dist(c: np.ndarray) -> np.ndarray:  # n×len(c)
        return ((x * x).sum(1)[:, None] - 2 * x @ c.T + (c * c).sum(1)[None]).clip(min=0)

    centres = x[[rng.integers(len(x))]]
    for _ in range(1, k):  # each next seed drawn with probability proportional to its squared distance
        d2 = sq_dist(centres).min(1)
        p = d2 / d2.sum() if d2.sum() > 0 else None
        centres = np.concatenate([centres, x[[rng.choice(len(x), p=p)]]])
    for _ in range(iters):
        assign = sq_dist(centres).argmin(1)
        new = np.stack([x[assign == j].mean(0) if (assign == j).any() else centres[j] for j in range(k)])
        if np.allclose(new, centres):
            break
        centres = new
    return centres


def fit_anchors(
    wh: np.ndarray,
    n: int,
    thr: float = 4.0,
    rng: np.random.Generator | None = None,
    generations: int = 1000,
    mutation_prob: float = 0.9,
    sigma: float = 0.1,
    n_init: int = 10,
) -> np.ndarray:
    """``n`` anchors (n×2 pixels, smallest area first) fitted to label sizes ``wh`` (n_labels×2 pixels).

    k-means on the logarithms of the sizes (best of ``n_init`` starts), then ``generations`` random
    mutations (each side multiplied by 1 + N(0, sigma)·u with probability ``mutation_prob``, u ~ U(0, 1)
    per generation), keeping a mutation whenever it raises :func:`anchor_fitness`.
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    wh = wh[(wh >= MIN_LABEL_PX).any(1)].astype(np.float64)
    if len(wh) < n:
        raise ValueError(f"AutoAnchor needs at least {n} labels of {MIN_LABEL_PX:g}+ pixels to fit {n} anchors")
    if len(wh) > MAX_FIT_LABELS:
        wh = wh[rng.choice(len(wh), MAX_FIT_LABELS, replace=False)]
    # Work with log sizes: a side ratio is a difference of logs. k-means of log sizes, because matching is by
    # ratio (YOLOv5 clusters linear sizes, which merges small clusters); best of a few starts (local optima).
    lw = np.log(wh).astype(np.float32)
    log_w, log_h, log_thr = lw[:, :1], lw[:, 1:], np.float32(np.log(thr))

    def fitness(la: np.ndarray) -> float:  # anchor_fitness of log anchors la
        d = np.maximum(np.abs(log_w - la[:, 0]), np.abs(log_h - la[:, 1])).min(1)
        return float((np.exp(-d) * (d < log_thr)).mean())

    starts = [kmeans(lw, n, rng) for _ in range(n_init)]
    f, lk = max(((fitness(s), s) for s in starts), key=lambda t: t[0])
    for _ in range(generations):
        v = np.ones_like(lk)
        while (v == 1).all():  # a generation must change something
            mutate = rng.random(lk.shape) < mutation_prob
            v = (1 + mutate * rng.random() * rng.standard_normal(lk.shape) * sigma).clip(0.3, 3.0)
        candidate = np.maximum(lk + np.log(v), np.log(MIN_LABEL_PX)).astype(np.float32)
        fc = fitness(candidate)
        if fc > f:
            f, lk = fc, candidate
    k = np.exp(lk.astype(np.float64))
    return k[np.argsort(k.prod(1))]


def label_wh(records: Sequence[ImageRecord], imgsz: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """Label sizes (n×2 pixels) as the model sees them: each image's long side resized to ``imgsz``.

    With ``rng``, each image's scale is jittered by ±10% (training rescales images; YOLOv5 checks the same way).
    """
    sizes = []
    for r in records:
        if len(r.labels):
            scale = imgsz / max(r.height, r.width) * (rng.uniform(0.9, 1.1) if rng is not None else 1.0)
            sizes.append(r.labels[:, 3:5].astype(np.float64) * np.array([r.width, r.height]) * scale)
    return np.concatenate(sizes) if sizes else np.zeros((0, 2))


def model_anchors(model: DetectionModel) -> np.ndarray:
    """The model's anchors in pixels, (nl·na)×2 in level order."""
    detect = model.detect
    return (detect.anchors * detect.stride.view(-1, 1, 1)).detach().cpu().double().view(-1, 2).numpy()


@torch.no_grad()
def set_anchors(model: DetectionModel, anchors: np.ndarray) -> None:
    """Give the model ``anchors`` ((nl·na)×2 pixels, smallest area first): the smallest go to the finest level.

    They become the Detect buffer (grid units, so they travel in every state dict and checkpoint) and
    the model YAML's ``anchors`` (pixels), so a model rebuilt from a checkpoint's YAML starts with them too.
    """
    detect = model.detect
    anchors = np.asarray(anchors, np.float64)
    anchors = anchors[np.argsort(anchors.prod(1), kind="stable")].reshape(detect.nl, detect.na, 2)
    by_level = np.empty_like(anchors)
    by_level[detect.stride.argsort().cpu().numpy()] = anchors
    pixels = torch.as_tensor(by_level, dtype=detect.anchors.dtype, device=detect.anchors.device)
    detect.anchors.copy_(pixels / detect.stride.view(-1, 1, 1))
    model.yaml["anchors"] = [[round(float(v), 1) for v in level.reshape(-1)] for level in by_level]


def format_anchors(anchors: np.ndarray) -> str:
    return ", ".join(f"{w:.0f}x{h:.0f}" for w, h in anchors)


def check_anchors(
    records: Sequence[ImageRecord],
    model: DetectionModel,
    thr: float = 4.0,
    imgsz: int = 640,
    seed: int = 0,
    generations: int = 1000,
) -> AnchorCheck:
    """Measure the model's anchors on the labels of ``records`` at ``imgsz``; below a BPR of 0.98 fit new
    ones and keep them if they are better (higher BPR, or equal BPR and higher fitness). Logs what happened."""
    rng = np.random.default_rng(seed)
    wh = label_wh(records, imgsz, rng)
    anchors = model_anchors(model)
    bpr, apt = anchor_metrics(wh, anchors, thr)
    result = AnchorCheck(bpr, apt, anchors)
    if not len(wh):
        LOGGER.warning("AutoAnchor: no labels in the training set; anchors unchanged")
        return result
    summary = f"AutoAnchor: {apt:.2f} anchors/target, {bpr:.3f} best possible recall (BPR) at {imgsz} px"
    if bpr >= BPR_MIN:
        LOGGER.info("%s: the anchors fit the dataset", summary)
        return result
    LOGGER.info("%s: below %.2f, fitting %d anchors to %d labels ...", summary, BPR_MIN, len(anchors), len(wh))
    tiny = int((wh < 3).any(1).sum())
    if tiny:
        LOGGER.warning("AutoAnchor: %d of %d labels are under 3 pixels at %d px", tiny, len(wh), imgsz)
    try:
        fitted = fit_anchors(wh, len(anchors), thr, rng, generations)
    except ValueError as e:
        LOGGER.warning("%s; anchors unchanged", e)
        return result
    result.fitted_bpr, result.fitted_apt = anchor_metrics(wh, fitted, thr)
    better = (result.fitted_bpr, anchor_fitness(wh, fitted, thr)) > (bpr, anchor_fitness(wh, anchors, thr))
    if better:
        set_anchors(model, fitted)
        result.anchors, result.replaced = model_anchors(model), True
        LOGGER.info(
            "AutoAnchor: new anchors %s: %.2f anchors/target, %.3f BPR (were %.2f, %.3f); saved with the model",
            format_anchors(fitted),
            result.fitted_apt,
            result.fitted_bpr,
            apt,
            bpr,
        )
    else:
        LOGGER.info("AutoAnchor: fitted anchors are no better (%.3f BPR); keeping the original ones", result.fitted_bpr)
    return result
