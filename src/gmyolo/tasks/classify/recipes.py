"""The two training recipes of ``gmyolo classify train`` and the rule that picks one (plain data, no torch).

``imagenet``  the authors' ImageNet recipe: AdamW at 5e-4 for a batch of 512, scaled linearly to the run's
              batch, a 5-epoch warm-up, RandAugment, mixup and cutmix, label smoothing. Right for
              fine-tuning their ImageNet weights and for ImageNet-scale batches; at batch 16 from random
              weights it runs at 1.6e-5 under heavy regularisers and learns next to nothing in a few epochs.
``scratch``   for a small dataset from random weights (as Ultralytics' classifier): AdamW at 2e-3 whatever
              the batch, a 1-epoch warm-up, no RandAugment, mixup, cutmix or label smoothing; the light
              augmentation (random resized crop, flip, colour jitter, random erasing) stays.
``auto``      (the default) ``imagenet`` when fine-tuning (``--weights``) or at a batch of 256 or more,
              else ``scratch``.

A field the recipe decides is None in :class:`~gmyolo.tasks.classify.options.ClassifyTrainArgs` until the
trainer resolves it; a value the user gives always wins. The resolved values are written to the fields
(args.yaml, checkpoints), so ``--resume`` continues with them. ``--lr``, ``--warmup-lr`` and ``--min-lr``
keep one meaning in both recipes: the rate for a batch of 512, the run using ``lr·batch/512``; the scratch
recipe's fixed rates are stored in that unit (2e-3 at batch 16 is ``lr: 0.064``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "RECIPES",
    "RECIPE_CHOICES",
    "RECIPE_FIELDS",
    "LARGE_BATCH",
    "LR_BATCH",
    "LR_FIELDS",
    "Recipe",
    "Resolution",
    "pick_recipe",
    "resolve_recipe",
]

LR_BATCH = 512  # --lr, --warmup-lr and --min-lr are given for a batch of this size (the authors' rule)
LARGE_BATCH = 256  # auto: from this batch on, ImageNet-scale training (the authors' recipe)
LR_FIELDS = ("lr", "warmup_lr", "min_lr")


@dataclass(frozen=True)
class Recipe:
    """The values of the fields a recipe decides. ``lr_batch``: the batch its learning rates are given
    for (the run scales them by batch/lr_batch), or None: the rates the run uses, at any batch."""

    values: dict[str, Any]
    lr_batch: int | None

    def value(self, name: str, batch: int) -> Any:
        """Field ``name``'s value for a run at ``batch``, in the field's unit (learning rates per 512)."""
        v = self.values[name]
        if name in LR_FIELDS:
            return v * LR_BATCH / (self.lr_batch or batch)
        return v


RECIPES: dict[str, Recipe] = {
    "imagenet": Recipe(
        dict(
            lr=5e-4,
            warmup_lr=5e-7,
            min_lr=5e-6,
            warmup_epochs=5.0,
            label_smoothing=0.1,
            auto_augment="rand-m9-mstd0.5-inc1",
            mixup=0.8,
            cutmix=1.0,
        ),
        lr_batch=LR_BATCH,
    ),
    # Measured with groupmixformer-m on the generated coloured shapes (40 train images a class, batch 16,
    # 5 epochs): lr 2e-3 reached 0.97-1.00 top-1 on seed 0 where 1e-2 stalled at 0.61 and 1e-3 learnt more
    # slowly over 3 seeds; RandAugment m9 cut seed 0 from 0.97 to 0.69; label smoothing made no difference.
    "scratch": Recipe(
        dict(
            lr=2e-3,
            warmup_lr=2e-6,
            min_lr=2e-5,
            warmup_epochs=1.0,
            label_smoothing=0.0,
            auto_augment="",
            mixup=0.0,
            cutmix=0.0,
        ),
        lr_batch=None,
    ),
}
RECIPE_CHOICES = ("auto", *RECIPES)
RECIPE_FIELDS = tuple(RECIPES["imagenet"].values)


@dataclass(frozen=True)
class Resolution:
    """What a run trains with: the recipe, why it was picked, every recipe field's value (the user's
    where given, in the fields' units) and which of them the user gave."""

    name: str
    why: str
    values: dict[str, Any]
    given: tuple[str, ...]

    def describe(self, batch: int) -> str:
        """One log line: the recipe, why, the learning rate as used and the values that differ by recipe."""
        v = self.values
        scale = batch / LR_BATCH
        parts = [
            f"lr {v['lr'] * scale:.3g} at batch {batch} (--lr {v['lr']:.3g} for a batch of {LR_BATCH}), "
            f"warm-up {v['warmup_epochs']:g} epoch{'' if v['warmup_epochs'] == 1 else 's'} "
            f"from {v['warmup_lr'] * scale:.3g}, "
            f"cosine to {v['min_lr'] * scale:.3g}",
            f"RandAugment {v['auto_augment'] or 'off'}",
            f"mixup {v['mixup']:g}, cutmix {v['cutmix']:g}",
            f"label smoothing {v['label_smoothing']:g}",
        ]
        given = f"; given: {', '.join('--' + k.replace('_', '-') for k in self.given)}" if self.given else ""
        return f"recipe: {self.name} ({self.why}): {'; '.join(parts)}{given}"


def pick_recipe(recipe: str, weights: str | None, batch: int, resume: str | None = None) -> tuple[str, str]:
    """``(name, why)``: ``recipe`` itself unless it is ``auto``, which picks ``imagenet`` when fine-tuning
    from ``weights`` or at a batch of :data:`LARGE_BATCH` or more, else ``scratch``."""
    if recipe not in RECIPE_CHOICES:
        raise ValueError(f"--recipe must be one of {', '.join(RECIPE_CHOICES)}, got {recipe!r}")
    if recipe != "auto":
        return recipe, "the resumed run's" if resume else f"--recipe {recipe}"
    if weights:
        return "imagenet", f"fine-tuning from --weights {weights}"
    if batch >= LARGE_BATCH:
        return "imagenet", f"batch {batch} >= {LARGE_BATCH}"
    return "scratch", f"random weights, batch {batch} < {LARGE_BATCH}"


def resolve_recipe(args: Any) -> Resolution:
    """The recipe of ``args`` (a ClassifyTrainArgs) resolved: its None fields get the recipe's values."""
    name, why = pick_recipe(args.recipe, args.weights, args.batch, args.resume)
    recipe = RECIPES[name]
    given = {k: getattr(args, k) for k in RECIPE_FIELDS if getattr(args, k) is not None}
    values = {k: given[k] if k in given else recipe.value(k, args.batch) for k in RECIPE_FIELDS}
    # Resuming, every field holds the run's resolved value: none of them is news.
    return Resolution(name, why, values, () if args.resume else tuple(given))
