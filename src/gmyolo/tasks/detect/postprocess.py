"""From decoded head outputs to image-space detections: NMS (or the end-to-end heads' top-k, which needs
none) and mapping boxes back to original pixels.

:func:`postprocess` reads the decoded layout a head declares (``output_format``, see
:data:`gmyolo.models.yolo.head.OUTPUT_FORMATS`): YOLOv5's xywh + objectness + classes and the anchor-free
xywh + classes go through NMS; the end-to-end heads' ranked xyxy + score + class rows are only filtered.
"""

from __future__ import annotations

import torch
from torchvision.ops import batched_nms, box_convert

from ...models.yolo.head import OUTPUT_FORMATS, YOLOV5_FORMAT

__all__ = ["postprocess", "non_max_suppression", "top_k_detections", "scale_boxes", "clip_boxes"]


def postprocess(
    decoded: torch.Tensor,
    output_format: str = YOLOV5_FORMAT,
    conf_thres: float = 0.25,
    iou_thres: float = 0.45,
    classes: list[int] | None = None,
    agnostic: bool = False,
    multi_label: bool = False,
    max_det: int = 300,
    extra: int = 0,
) -> list[torch.Tensor]:
    """Per image, an n×6 tensor ``[x1, y1, x2, y2, score, class]`` (input pixels), best first; with ``extra``
    trailing columns of ``decoded`` (a segmentation head's mask coefficients: its detections, the first of its
    ``*_masks`` outputs) n×(6 + extra), those columns carried along."""
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"unknown output format {output_format!r}; known: {', '.join(OUTPUT_FORMATS)}")
    if output_format == "xyxy_score_class":
        return top_k_detections(decoded, conf_thres, classes, max_det)
    return non_max_suppression(
        decoded,
        conf_thres,
        iou_thres,
        classes,
        agnostic,
        multi_label,
        max_det,
        objectness=output_format.startswith(YOLOV5_FORMAT),
        extra=extra,
    )


def top_k_detections(
    decoded: torch.Tensor, conf_thres: float = 0.25, classes: list[int] | None = None, max_det: int = 300
) -> list[torch.Tensor]:
    """End-to-end output B×K×6 (xyxy, score, class; ranked by the head) -> per image the rows above
    ``conf_thres`` (of ``classes`` if given), at most ``max_det``. No NMS: the one-to-one head has none."""
    if not 0 <= conf_thres <= 1:
        raise ValueError(f"conf_thres must be in [0, 1], got {conf_thres}")
    out = []
    for x in decoded:
        x = x[x[:, 4] > conf_thres]
        if classes is not None:
            x = x[(x[:, 5:6] == torch.tensor(classes, device=x.device, dtype=x.dtype)).any(1)]
        out.append(x[:max_det])
    return out


def non_max_suppression(
    decoded: torch.Tensor,
    conf_thres: float = 0.25,
    iou_thres: float = 0.45,
    classes: list[int] | None = None,
    agnostic: bool = False,
    multi_label: bool = False,
    max_det: int = 300,
    max_nms: int = 30000,
    objectness: bool = True,
    extra: int = 0,
) -> list[torch.Tensor]:
    """Per image, an n×(6 + extra) tensor ``[x1, y1, x2, y2, score, class, extra...]`` (input pixels), best first.

    ``decoded``: B×N×(5+nc+extra) from YOLOv5's Detect head (xywh, objectness, class scores; score = objectness
    × class score), or with ``objectness=False`` B×N×(4+nc+extra) from the anchor-free head (score = class
    score); ``extra`` trailing columns (mask coefficients) ride along. ``multi_label`` keeps every class above
    the threshold per box (used for mAP).
    """
    if not 0 <= conf_thres <= 1 or not 0 <= iou_thres <= 1:
        raise ValueError(f"conf_thres and iou_thres must be in [0, 1], got {conf_thres}, {iou_thres}")
    first = 5 if objectness else 4  # the first class column
    nc = decoded.shape[2] - first - extra
    multi_label &= nc > 1
    out = []
    for x in decoded:
        x = x[x[:, 4] > conf_thres] if objectness else x[x[:, 4 : 4 + nc].amax(1) > conf_thres]
        if not len(x):
            out.append(torch.zeros((0, 6 + extra), device=decoded.device))
            continue
        scores = x[:, 5 : 5 + nc] * x[:, 4:5] if objectness else x[:, 4 : 4 + nc]
        boxes = box_convert(x[:, :4], "cxcywh", "xyxy")
        carried = x[:, first + nc :]
        if multi_label:
            i, j = (scores > conf_thres).nonzero(as_tuple=False).T
            det = torch.cat((boxes[i], scores[i, j, None], j[:, None].float(), carried[i]), 1)
        else:
            conf, j = scores.max(1, keepdim=True)
            det = torch.cat((boxes, conf, j.float(), carried), 1)[conf.view(-1) > conf_thres]
        if classes is not None:
            det = det[(det[:, 5:6] == torch.tensor(classes, device=det.device)).any(1)]
        if len(det) > max_nms:
            det = det[det[:, 4].argsort(descending=True)[:max_nms]]
        group = torch.zeros_like(det[:, 5]) if agnostic else det[:, 5]
        keep = batched_nms(det[:, :4], det[:, 4], group, iou_thres)[:max_det]
        out.append(det[keep])
    return out


def clip_boxes(boxes: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Clip n×4 xyxy boxes to an image of shape (h, w), in place."""
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clamp(0, shape[1])
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clamp(0, shape[0])
    return boxes


def scale_boxes(
    boxes: torch.Tensor,
    original_shape: tuple[int, int],
    ratio_pad: tuple[tuple[float, float], tuple[float, float]],
) -> torch.Tensor:
    """Map n×4 xyxy boxes from the letterboxed input back to the original (h0, w0) image, in place.

    ``ratio_pad`` = ((scale_h, scale_w), (pad_w, pad_h)) as the dataset reports it.
    """
    (sh, sw), (pw, ph) = ratio_pad
    boxes[:, [0, 2]] = (boxes[:, [0, 2]] - pw) / sw
    boxes[:, [1, 3]] = (boxes[:, [1, 3]] - ph) / sh
    return clip_boxes(boxes, original_shape)
