"""Does the teacher know the data as it is fed? A check before training, and a warning that says why not.

A teacher fed the wrong normalisation, with weights of another task, or with classes in another order
still produces confident logits, and distillation then teaches noise without an error anywhere. The
check runs where that is likely:

- the teacher scores below twice chance on the validation split, or the student beats it after its
  first epoch;
- or its weights carry no input convention (a bare state dict), so it is fed the dataset's statistics by
  assumption.

Then the usual conventions (ImageNet, mean = std = 0.5, CLIP, unnormalised, the dataset's) are tried on
up to :data:`CHECK_IMAGES` validation images, and a convention that scores clearly better is named in
the warning with the recipe lines that select it. Every process evaluates its shard (the sums are
all-reduced), so the check is DDP-safe; only the caller decides who prints.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kdcompress.data import DataBundle
from kdcompress.data.spec import InputSpec
from kdcompress.evaluate import evaluate
from kdcompress.runtime import Runtime

CHECK_IMAGES = 1000
#: How much better (top-1 points) another convention must score before the warning names it.
CLEARLY_BETTER = 10.0
CONVENTIONS: dict[str, InputSpec] = {
    "the ImageNet statistics": InputSpec((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "mean = std = 0.5 (Inception, EfficientNet-Lite, many ViTs)": InputSpec((0.5,) * 3, (0.5,) * 3),
    "the CLIP statistics": InputSpec((0.4815, 0.4578, 0.4082), (0.2686, 0.2613, 0.2758)),
    "unnormalised pixels in [0, 1]": InputSpec((0.0,) * 3, (1.0,) * 3),
}


@dataclass(frozen=True)
class Finding:
    """What the check saw: the teacher's top-1 as fed, and a better convention when one exists."""

    problem: str | None  # "near chance" / "below the student" sentence part; None: only an assumption
    better_name: str | None = None
    better_spec: InputSpec | None = None
    better_top1: float | None = None
    used_top1: float | None = None
    images: int = 0  # validation images the conventions were compared on

    def message(self, used: InputSpec) -> str | None:
        """The warning, or None when there is nothing to say."""
        if self.problem is None and self.better_spec is None:
            return None
        finding = self.problem or (
            f"carries no input convention, so it was fed {used.describe()} ({used.origin})"
        )
        text = f"The teacher {finding}"
        if self.better_spec is not None:
            mean = "[" + ", ".join(f"{v:g}" for v in self.better_spec.mean) + "]"
            std = "[" + ", ".join(f"{v:g}" for v in self.better_spec.std) + "]"
            text += (
                f"; fed {self.better_name} it scores {self.better_top1:.2f}% instead of "
                f"{self.used_top1:.2f}% on {self.images} validation images: if it was trained that way, "
                f"set teacher.input.mean={mean} and teacher.input.std={std}"
            )
        else:
            text += (
                f": its weights may be wrong, it may expect other preprocessing (it was fed "
                f"{used.describe()}, from {used.origin}; set teacher.input.mean/std if it was trained "
                "otherwise), or its classes may be in another order than the data's"
            )
        return text + "."


def _candidates(used: InputSpec, data: DataBundle) -> list[tuple[str, InputSpec]]:
    channels = data.fmt.channels
    dataset = data.spec if data.spec is not None else used
    options = [(f"{dataset.origin}", dataset), *CONVENTIONS.items()]
    seen = [used]
    out = []
    for name, spec in options:
        adapted = spec.for_channels(channels)
        if any(adapted.normalisation_equals(s) for s in seen):
            continue
        seen.append(adapted)
        out.append((name, adapted))
    return out


def _top1(teacher: nn.Module, data: DataBundle, spec: InputSpec, runtime: Runtime, precision: str) -> float:
    val = data.dataset.val
    subset = val.subset(torch.arange(min(len(val), CHECK_IMAGES)))
    loader = data.eval_loader(
        subset,
        256,
        runtime.device,
        rank=runtime.rank,
        world=runtime.world_size,
        specs=(spec,),
        report_damage=False,  # the run reports its damaged files once
    )
    return evaluate(teacher, loader, runtime, precision)["top1"]


def check_teacher(
    teacher: nn.Module,
    data: DataBundle,
    used: InputSpec,
    top1: float,
    runtime: Runtime,
    precision: str,
    *,
    assumed: bool,
    student_top1: float | None = None,
) -> Finding:
    """Judge a teacher that scores ``top1`` fed ``used``; ``assumed`` when its weights carried no
    convention; ``student_top1`` after the student's first epoch (None before training)."""
    chance = 100.0 / data.num_classes
    problem = None
    if student_top1 is None and top1 < 2 * chance:
        problem = f"scores {top1:.2f}% on the validation split, near chance ({chance:.2f}%)"
    elif student_top1 is not None and student_top1 > top1:
        problem = f"scores {top1:.2f}%, below the student after one epoch ({student_top1:.2f}%)"
    if problem is None and not (assumed and student_top1 is None):
        return Finding(None)
    used_top1 = _top1(teacher, data, used, runtime, precision)
    best: tuple[str, InputSpec, float] | None = None
    for name, spec in _candidates(used, data):
        score = _top1(teacher, data, spec, runtime, precision)
        if score >= used_top1 + CLEARLY_BETTER and (best is None or score > best[2]):
            best = (name, spec, score)
    if best is None:
        return Finding(problem)
    images = min(len(data.dataset.val), CHECK_IMAGES)
    return Finding(problem, best[0], best[1], best[2], used_top1, images)
