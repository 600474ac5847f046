"""Teacher labels: a learner trained on the whole training split labels a text set with its class distribution.

Any method that writes text can use them (``soft_labels: teacher``): the texts stay readable and
model-agnostic, and every learner trains on the distributions with the loop's soft cross-entropy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..cache import build_lock, in_use, key_of
from ..data import Task
from ..errors import ConfigError
from ..learners import get_learner
from ..seeds import TEACHER_SEED
from .method_config import MethodConfig



@dataclass
class TeacherLabelsConfig(MethodConfig):
    """The label options of a method that writes text."""

    soft_labels: str = field(default="none", metadata={"help": "none (the real labels) or teacher (its distributions)"})
    teacher: str = field(default="minilm-frozen", metadata={
        "help": "the teacher learner, trained on the full split; several, comma-separated (an ensemble), average "
                "their distributions"})
    temperature: float = field(default=1.0, metadata={"gt": 0, "help": "softmax temperature of the teacher labels"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.soft_labels not in ("none", "teacher"):
            raise ConfigError(f"soft_labels must be none or teacher, not {self.soft_labels!r}")
        names = self.teacher_names()
        if not all(names) or len(set(names)) < len(names):
            raise ConfigError(f"teacher: {self.teacher!r} has an empty or a repeated learner name")
        if self.soft_labels == "teacher":
            for name in names:
                get_learner(name)  # a misspelt member fails here, not after the others have trained
        self.teacher = ",".join(names)  # one spelling, one set key

    def teacher_names(self) -> list[str]:
        return [name.strip() for name in self.teacher.split(",")]


def teacher_logits(task: Task, teacher: str, texts: list[str], pairs: list[str] | None) -> torch.Tensor:
    """The teacher's logits for ``texts`` [n, C]: the learner trained (seeded, full-data recipe) on the task's
    training split, once per (task content, teacher, recipe): its parameters are cached as safetensors."""
    from safetensors.torch import load_file, save_file

    from ..atomic import atomic_write
    from ..resources import cache_dir
    from ..train import predict_logits, train

    learner = get_learner(teacher).for_task(task)
    train_texts, train_pairs, train_labels = task.columns("train")
    recipe = learner.full_data_recipe(len(train_labels))
    model = learner.build(task.num_classes, TEACHER_SEED)
    path = cache_dir() / "teachers" / f"{key_of(task.fingerprint, learner.describe(), recipe.to_dict(), TEACHER_SEED)}.safetensors"
    with in_use("teachers"), build_lock(path):  # parallel runs share one teacher, trained once
        if path.exists():
            params = load_file(str(path))
        else:
            params = train(learner, model, learner.encode(train_texts, train_pairs), torch.tensor(train_labels),
                           recipe, seed=TEACHER_SEED, progress=True)
            params = {k: v.detach().clone().contiguous() for k, v in params.items()}  # clones: tied weights
            atomic_write(path, lambda p: save_file(params, str(p)))
    return predict_logits(learner, model, params, learner.encode(texts, pairs), precision=recipe.precision)


def relabel(config: TeacherLabelsConfig, task: Task, texts: list[str], pairs: list[str] | None,
            labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """The labels a text set keeps (its real ones, or the teacher's distributions) and what to log about them."""
    if config.soft_labels == "none":
        return labels, {}
    each = [(teacher_logits(task, name, texts, pairs) / config.temperature).softmax(-1)
            for name in config.teacher_names()]
    probs = torch.stack(each).mean(0)  # an ensemble averages probabilities (a mixture), not logits

    def agree(p: torch.Tensor) -> float | None:
        return float((p.argmax(-1) == labels).float().mean()) if labels.dim() == 1 else None

    log = {"learner": config.teacher, "temperature": config.temperature, "agrees_with_labels": agree(probs),
           "mean_top_probability": float(probs.max(-1).values.mean())}
    if len(each) > 1:
        log["members_agree_with_labels"] = {name: agree(p) for name, p in zip(config.teacher_names(), each)}
    return probs, {"teacher": log}
