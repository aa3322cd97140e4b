"""``gmyolo train``: train a detector (the default: a GroupMixFormer detector on the built-in data)."""

from __future__ import annotations

import argparse

from ..cfg import hyp_names
from ..tasks.detect.options import TrainArgs
from .common import add_plugin_argument, add_resume_argument, add_speed_arguments, args_as


def add_parser(commands: argparse._SubParsersAction) -> None:
    d = TrainArgs()
    p = commands.add_parser("train", help="train a detector (default: GroupMixFormer detector on synthetic data)")
    p.add_argument("--data", default=d.data, help="dataset YAML, or 'synth' for the built-in dataset (default)")
    p.add_argument("--model", default=d.model, help=f"model YAML: packaged name or path (default {d.model})")
    p.add_argument("--weights", default=None, help="start from a gmyolo checkpoint (tensors copied where they fit)")
    p.add_argument("--backbone-weights", default=None, help="the authors' GroupMixFormer ImageNet checkpoint")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--imgsz", type=int, default=d.imgsz, help="training image size (rounded up to the max stride)")
    p.add_argument("--batch", type=int, default=d.batch, help="batch size")
    p.add_argument(
        "--nbs",
        type=int,
        default=d.nbs,
        help=f"nominal batch: gradients accumulate over nbs/batch batches (default {d.nbs}; YOLOv5 uses 64)",
    )
    p.add_argument(
        "--device", default=d.device, help="'' (auto), cpu, 0, cuda:0, or 0,1,2,3: those GPUs, one process each (DDP)"
    )
    add_speed_arguments(p)
    p.add_argument("--project", default=d.project)
    p.add_argument("--name", default=d.name)
    p.add_argument("--exist-ok", action="store_true", help="reuse project/name instead of incrementing it")
    add_resume_argument(p)
    p.add_argument("--optimizer", default=d.optimizer, help="auto (AdamW for transformer backbones), SGD, AdamW")
    p.add_argument("--cos-lr", action="store_true", help="cosine learning-rate decay (default linear)")
    p.add_argument("--patience", type=int, default=d.patience, help="early stop after N epochs without improvement")
    p.add_argument("--freeze", type=int, default=0, help="freeze the first N layers (e.g. 1 = the whole backbone)")
    p.add_argument(
        "--freeze-stages",
        type=int,
        default=0,
        help="freeze the stem and first N backbone stages (GroupMixFormer, Timm, TorchVision; numbered as out_indices)",
    )
    p.add_argument("--close-mosaic", type=int, default=d.close_mosaic, help="no mosaic for the last N epochs")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--sync-bn", action="store_true", help="BatchNorm statistics over all GPUs (DDP)")
    p.add_argument("--cache", action="store_true", help="cache decoded training images in RAM")
    p.add_argument(
        "--hyp",
        nargs="*",
        default=[],
        metavar="NAME|PATH KEY=VALUE",
        help=f"hyper-parameters: a packaged set ({', '.join(hyp_names())}; default scratch-low) or a YAML file, "
        "then KEY=VALUE overrides",
    )
    p.add_argument("--noautoanchor", action="store_true", help="keep the model's anchors (no AutoAnchor check/fit)")
    p.add_argument("--no-tensorboard", dest="tensorboard", action="store_false", help="no TensorBoard logging")
    add_plugin_argument(p)
    p.add_argument("--no-plots", dest="plots", action="store_false")
    p.set_defaults(run=run_train)


def run_train(args: argparse.Namespace) -> dict:
    """Train the task of the model's head (detection, or segmentation for a Segment head)."""
    from ..tasks import trainer_for

    options = args_as(TrainArgs, args)  # --hyp's items go as they are: the run reads them (hyp.hyp_values)
    return trainer_for(options)(options).train()
