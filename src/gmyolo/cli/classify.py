"""``gmyolo classify train|val|predict``: image classification with GroupMixFormer on folder-per-class data."""

from __future__ import annotations

import argparse

from ..tasks.classify.options import ClassifyPredictArgs, ClassifyTrainArgs, ClassifyValArgs
from ..tasks.classify.recipes import LARGE_BATCH, LR_FIELDS, RECIPE_CHOICES, RECIPES
from .common import add_resume_argument, add_speed_arguments, args_as

__all__ = ["add_parser"]


def add_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "classify",
        help="image classification: fine-tune, evaluate and predict with GroupMixFormer",
        description="Image classification on folder-per-class data (DIR/train/<class>/*.jpg, DIR/val/<class>/*.jpg).",
    )
    sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    add_train(sub)
    add_val(sub)
    add_predict(sub)


def add_train(sub: argparse._SubParsersAction) -> None:
    d = ClassifyTrainArgs()
    p = sub.add_parser(
        "train",
        help="train or fine-tune a classifier (the authors' ImageNet recipe, or one for small data from scratch)",
    )
    p.add_argument(
        "--data", default="", help="folder with train/ and val/ folders, one sub-folder per class (not with --resume)"
    )
    p.add_argument("--model", default=d.model, help="groupmixformer-m, -t, -s, -b or -l (default %(default)s)")
    p.add_argument(
        "--weights", default=None, help="the authors' ImageNet checkpoint (head replaced) or a gmyolo classifier"
    )
    p.add_argument("--epochs", type=int, default=d.epochs, help="(default %(default)s)")
    p.add_argument("--imgsz", type=int, default=d.imgsz, help="training and evaluation crop size (default %(default)s)")
    p.add_argument("--batch", type=int, default=d.batch, help="(default %(default)s)")
    p.add_argument(
        "--device",
        default=d.device,
        help="'' (auto: first GPU, else CPU), cpu, 0, cuda:0, or 0,1,2,3: DDP, one process each",
    )
    add_speed_arguments(p)
    p.add_argument("--project", default=d.project, help="(default %(default)s)")
    p.add_argument("--name", default=d.name, help="(default %(default)s)")
    p.add_argument("--exist-ok", action="store_true", help="reuse project/name instead of incrementing it")
    add_resume_argument(p)
    r = p.add_argument_group(
        "recipe",
        "--recipe picks the defaults marked 'the recipe's'; a value given here always wins. "
        f"auto: imagenet when fine-tuning (--weights) or at --batch >= {LARGE_BATCH}, else scratch.",
    )
    r.add_argument(
        "--recipe",
        default=d.recipe,
        choices=RECIPE_CHOICES,
        help="imagenet: the authors' ImageNet recipe (fine-tuning, large batches); scratch: small data from random "
        f"weights (AdamW at {RECIPES['scratch'].values['lr']:g} at any batch, a 1-epoch warm-up, no RandAugment, "
        f"mixup, cutmix or label smoothing); auto: imagenet with --weights or --batch >= {LARGE_BATCH}, else "
        "scratch (default %(default)s)",
    )
    r.add_argument(
        "--lr",
        type=float,
        default=None,
        help="learning rate for a batch of 512 (used: lr*batch/512) " + recipe_default("lr"),
    )
    r.add_argument(
        "--warmup-lr", type=float, default=None, help="warm-up start for a batch of 512 " + recipe_default("warmup_lr")
    )
    r.add_argument(
        "--min-lr",
        type=float,
        default=None,
        help="end of the cosine decay for a batch of 512 " + recipe_default("min_lr"),
    )
    r.add_argument(
        "--warmup-epochs",
        type=float,
        default=None,
        help="linear warm-up (at most half the run) " + recipe_default("warmup_epochs"),
    )
    r.add_argument("--weight-decay", type=float, default=d.weight_decay, help="(default %(default)s)")
    r.add_argument("--label-smoothing", type=float, default=None, help=recipe_default("label_smoothing"))
    r.add_argument(
        "--clip-grad", type=float, default=d.clip_grad, help="max gradient norm (0: off) (default %(default)s)"
    )
    r.add_argument("--drop-path", type=float, default=None, help="stochastic depth (default: the variant's)")
    r.add_argument(
        "--auto-augment",
        default=None,
        help="timm RandAugment/AutoAugment spec ('' for none) " + recipe_default("auto_augment"),
    )
    r.add_argument(
        "--color-jitter",
        type=float,
        default=d.color_jitter,
        help="used only without --auto-augment (default %(default)s)",
    )
    r.add_argument("--reprob", type=float, default=d.reprob, help="random erasing probability (default %(default)s)")
    r.add_argument("--mixup", type=float, default=None, help="mixup alpha (0: off) " + recipe_default("mixup"))
    r.add_argument("--cutmix", type=float, default=None, help="cutmix alpha (0: off) " + recipe_default("cutmix"))
    r.add_argument(
        "--mixup-prob", type=float, default=d.mixup_prob, help="probability of mixing a batch (default %(default)s)"
    )
    r.add_argument(
        "--mixup-switch-prob",
        type=float,
        default=d.mixup_switch_prob,
        help="cutmix instead of mixup (default %(default)s)",
    )
    r.add_argument("--hflip", type=float, default=d.hflip, help="horizontal flip probability (default %(default)s)")
    variant = "(default: the variant's pretrained config, as timm.data.resolve_data_config gives it)"
    r.add_argument(
        "--interpolation",
        default=d.interpolation,
        choices=["bicubic", "bilinear", "nearest", "random"],
        help=f"resize interpolation {variant}",
    )
    r.add_argument(
        "--crop-pct", type=float, default=d.crop_pct, help=f"evaluation: resize to imgsz/crop_pct, crop {variant}"
    )
    r.add_argument("--mean", type=float, nargs=3, default=d.mean, help=f"normalisation mean (RGB) {variant}")
    r.add_argument("--std", type=float, nargs=3, default=d.std, help=f"normalisation std (RGB) {variant}")
    r.add_argument("--ema", action="store_true", help="keep an EMA of the weights; validate and save it")
    r.add_argument("--ema-decay", type=float, default=d.ema_decay, help="(default %(default)s)")
    p.add_argument("--sync-bn", action="store_true", help="BatchNorm statistics over all GPUs (DDP)")
    p.add_argument("--no-tensorboard", dest="tensorboard", action="store_false", help="no TensorBoard logging")
    p.add_argument(
        "--patience",
        type=int,
        default=d.patience,
        help="early stop after N epochs, no better top-1 (default %(default)s)",
    )
    p.add_argument("--seed", type=int, default=d.seed, help="(default %(default)s)")
    p.add_argument("--no-plots", dest="plots", action="store_false")
    p.set_defaults(run=run_train)


def add_val(sub: argparse._SubParsersAction) -> None:
    d = ClassifyValArgs()
    p = sub.add_parser("val", help="top-1/top-5 and per-class accuracy of a classifier, confusion matrix")
    p.add_argument(
        "--weights",
        default=d.weights,
        help="a gmyolo classifier, or the authors' ImageNet checkpoint (default %(default)s)",
    )
    p.add_argument("--data", default=None, help="dataset folder (default: the one the classifier was trained on)")
    p.add_argument(
        "--split", default=d.split, help="sub-folder of --data to evaluate (val, test, train) (default %(default)s)"
    )
    p.add_argument("--imgsz", type=int, default=None, help="crop size (default: the training size)")
    p.add_argument("--batch", type=int, default=d.batch, help="(default %(default)s)")
    p.add_argument("--device", default=d.device, help="'' (auto: first GPU, else CPU), cpu, 0, cuda:0")
    p.add_argument("--workers", type=int, default=None, help="loader processes (default: min(8, CPU cores, batch))")
    p.add_argument("--project", default=d.project, help="(default %(default)s)")
    p.add_argument("--name", default=d.name, help="(default %(default)s)")
    p.add_argument("--exist-ok", action="store_true")
    p.add_argument("--no-plots", dest="plots", action="store_false")
    p.set_defaults(run=run_val)


def add_predict(sub: argparse._SubParsersAction) -> None:
    d = ClassifyPredictArgs()
    p = sub.add_parser("predict", help="print the top-k classes of images (optionally save them as CSV/JSON)")
    p.add_argument(
        "--weights",
        default=d.weights,
        help="a gmyolo classifier, or the authors' ImageNet checkpoint (default %(default)s)",
    )
    p.add_argument("--source", required=True, help="an image, a folder (recursive) or a glob pattern (quoted)")
    p.add_argument("--imgsz", type=int, default=None, help="crop size (default: the training size)")
    p.add_argument("--topk", type=int, default=d.topk, help="(default %(default)s)")
    p.add_argument("--batch", type=int, default=d.batch, help="(default %(default)s)")
    p.add_argument("--device", default=d.device, help="'' (auto: first GPU, else CPU), cpu, 0, cuda:0")
    p.add_argument("--workers", type=int, default=None, help="loader processes (default: min(8, CPU cores, batch))")
    p.add_argument("--save", default=None, metavar="FILE", help="also write the predictions to FILE.csv or FILE.json")
    p.set_defaults(run=run_predict)


def recipe_default(name: str) -> str:
    """'(default: the recipe's: imagenet X, scratch Y)' for a field the recipe decides."""
    values = []
    for recipe_name, recipe in RECIPES.items():
        v = recipe.values[name]
        text = repr(v) if isinstance(v, str) else f"{v:g}"
        if name in LR_FIELDS and recipe.lr_batch is None:
            text = f"{v:g}*512/batch, so {v:g} at any batch"
        values.append(f"{recipe_name} {text}")
    return f"(default: the recipe's: {'; '.join(values)})"


def run_train(args: argparse.Namespace) -> dict:
    from ..tasks.classify.train import classify_train

    return classify_train(args_as(ClassifyTrainArgs, args))


def run_val(args: argparse.Namespace) -> dict:
    from ..tasks.classify.val import classify_val

    return classify_val(args_as(ClassifyValArgs, args))


def run_predict(args: argparse.Namespace) -> list:
    from ..tasks.classify.predict import classify_predict

    return classify_predict(args_as(ClassifyPredictArgs, args))
