"""The options of ``gmyolo classify train|val|predict`` as dataclasses (plain data and checks, no torch)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ...engine.options import TrainOptions
from .recipes import Resolution, resolve_recipe

__all__ = [
    "ClassifyTrainArgs",
    "ClassifyValArgs",
    "ClassifyPredictArgs",
    "IMAGENET_DEFAULT_MEAN",
    "IMAGENET_DEFAULT_STD",
]

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)  # timm.data's constants, without importing timm
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)


@dataclass
class ClassifyTrainArgs(TrainOptions):
    """``gmyolo classify train``: :class:`~gmyolo.engine.options.TrainOptions` with classification's defaults and
    its own options."""

    data: str = ""  # folder holding train/ and val/ (or test/), each with one folder per class
    model: str = "groupmixformer-t"  # variant: groupmixformer-m, -t, -s, -b, -l
    weights: str | None = None  # the authors' ImageNet checkpoint or a gmyolo classifier to start from
    epochs: int = 30
    imgsz: int = 224
    batch: int = 64
    project: str = "runs/classify/train"
    patience: int = 0  # stop after this many epochs without a better top-1 (0: never)
    # The recipe: 'imagenet' (the authors'), 'scratch' (small data, random weights) or 'auto': imagenet with
    # --weights or a batch >= 256, else scratch (recipes.py). None below: the recipe's value.
    recipe: str = "auto"
    lr: float | None = None  # for a batch of 512; the run uses lr·batch/512 (as do warmup_lr and min_lr)
    warmup_lr: float | None = None
    min_lr: float | None = None
    warmup_epochs: float | None = None  # at most half of the run
    weight_decay: float = 0.05
    label_smoothing: float | None = None
    clip_grad: float = 5.0  # max gradient norm; 0 turns clipping off
    drop_path: float | None = None  # stochastic depth; None: the variant's (m/t/l 0.1, s 0.2, b 0.5)
    auto_augment: str | None = None  # timm RandAugment spec; '' for none
    color_jitter: float = 0.4  # only used without auto_augment (timm skips it under RandAugment)
    reprob: float = 0.25  # random erasing probability
    mixup: float | None = None  # mixup alpha (0: off)
    cutmix: float | None = None  # cutmix alpha (0: off)
    mixup_prob: float = 1.0  # probability of mixing a batch at all
    mixup_switch_prob: float = 0.5  # probability of cutmix instead of mixup
    hflip: float = 0.5
    # Preprocessing; None: the variant's, from its pretrained config (PRETRAINED_CFG, the table timm reads).
    interpolation: str | None = None
    crop_pct: float | None = None  # evaluation: resize to imgsz/crop_pct, centre crop imgsz
    mean: list[float] | None = None
    std: list[float] | None = None
    ema: bool = False  # keep an EMA of the weights, validate and save it as the model
    ema_decay: float = 0.9998

    def check(self) -> None:
        """Refuse bad values before any work; the recipe's values (resolved on a copy) are checked too."""
        if not self.data:
            raise ValueError("--data is required: a folder with train/ and val/ sub-folders of class folders")
        super().check()
        self.resolved().check_recipe_values()

    def check_recipe_values(self) -> None:
        """The checks of the values a recipe fills in (call on :meth:`resolved` args)."""
        for name in ("warmup_epochs", "lr", "warmup_lr", "min_lr", "weight_decay", "clip_grad"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must not be negative, got {getattr(self, name)}")
        for name in ("label_smoothing", "reprob", "mixup_prob", "mixup_switch_prob", "hflip", "ema_decay"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"--{name.replace('_', '-')} must be between 0 and 1, got {getattr(self, name)}")
        if not 0 < self.crop_pct <= 1:
            raise ValueError(f"--crop-pct must be in (0, 1], got {self.crop_pct}")
        if self.drop_path is not None and not 0 <= self.drop_path < 1:
            raise ValueError(f"--drop-path must be in [0, 1), got {self.drop_path}")
        if self.mixup < 0 or self.cutmix < 0:
            raise ValueError(f"--mixup and --cutmix must not be negative, got {self.mixup} and {self.cutmix}")
        if self.mixing and self.batch % 2:
            raise ValueError(
                f"mixup/cutmix (alpha {self.mixup:g} / {self.cutmix:g}) mix each batch with its reverse and need an "
                f"even --batch, got {self.batch} (or turn them off: --mixup 0 --cutmix 0)"
            )
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:  # resolved: none is None
            raise ValueError(f"--mean and --std need 3 values each (std positive), got {self.mean} and {self.std}")

    def resolved(self) -> ClassifyTrainArgs:
        """A copy with the recipe resolved (``recipe`` names the one picked, its None fields hold its values) and
        the variant's preprocessing where none was given."""
        r = resolve_recipe(self)
        return dataclasses.replace(self, recipe=r.name, **r.values, **self.preprocessing())

    def apply_recipe(self) -> Resolution:
        """Resolve the recipe and the preprocessing in place (what the run trains with and saves); returns the
        recipe picked and why."""
        r = resolve_recipe(self)
        for name, value in {"recipe": r.name, **r.values, **self.preprocessing()}.items():
            setattr(self, name, value)
        return r

    def preprocessing(self) -> dict[str, object]:
        """interpolation, crop_pct, mean and std: the values given, the others the model variant's."""
        from .model import preprocessing  # the variant table lives with the model (torch); options stay light

        given = {k: getattr(self, k) for k in ("interpolation", "crop_pct", "mean", "std")}
        return preprocessing(self.model, **given)

    @property
    def mixing(self) -> bool:
        """Whether batches are mixed (mixup or cutmix); for resolved args."""
        return (self.mixup > 0 or self.cutmix > 0) and self.mixup_prob > 0


@dataclass
class ClassifyValArgs:
    weights: str = "runs/classify/train/exp/weights/best.pt"  # a gmyolo classifier or an authors' checkpoint
    data: str | None = None  # default: the dataset the classifier was trained on
    split: str = "val"
    imgsz: int | None = None  # default: the training size (224 for an authors' checkpoint)
    batch: int = 64
    device: str = ""
    workers: int | None = None  # None: min(8, CPU cores, batch)
    project: str = "runs/classify/val"
    name: str = "exp"
    exist_ok: bool = False
    plots: bool = True
    progress: bool = True


@dataclass
class ClassifyPredictArgs:
    weights: str = "runs/classify/train/exp/weights/best.pt"
    source: str = ""  # an image, a folder (searched recursively) or a glob pattern
    imgsz: int | None = None  # default: the training size
    topk: int = 5
    batch: int = 32
    device: str = ""
    workers: int | None = None  # None: min(8, CPU cores, batch)
    save: str | None = None  # write the predictions to this .csv or .json file
    progress: bool = True
