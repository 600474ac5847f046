"""learned-labels: real texts picked by a coreset, with class distributions learned by meta-gradient.

Sucholutsky & Schonlau 2019 (learnable soft labels), Bohdal et al. 2020 ("Flexible Dataset Distillation:
Learn Labels Instead of Images"). The inputs stay real sentences, so the set is text that any learner can
train on; only the labels (and, with ``learn: weights|both``, a weight per text, as in Ren et al. 2018's
example reweighting) are learned, by unrolling a learner's training on the fixed texts (``unroll``, as bptt) and
lowering the trained learner's loss on real batches. What is unrolled is by default the recipe evaluation
trains the set with (``inner_recipe: learner``); where that is too costly to unroll, the labels follow the
learner's own training runs by one-step look-ahead hypergradients (``inner_recipe: online``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..data import Task
from ..errors import ConfigError
from ..learners import Learner, get_learner
from ..distilled import DistilledDataset
from ..progress import bar as progress_bar
from ..recipe import Recipe
from ..train import Params, batch_of, train
from .base import Distiller, MethodConfig, check_finite, fresh_model, get_method, real_batch, register_method, thin
from .learned_set import real_inputs
from .unroll import inverse_softplus, unroll

INITS = ("kmeans", "herding", "random", "kcenter")
INNER_RECIPES = ("sgd", "learner", "online")
LEARNED = ("labels", "weights", "both")


@dataclass
class LearnedLabelsConfig(MethodConfig):
    init: str = field(default="kmeans", metadata={"help": "the coreset that picks the texts: " + ", ".join(INITS)})
    init_learner: str = field(default="", metadata={
        "help": "the learner whose sentence space the coreset picks in (none: the one the labels are learned with); "
                "e.g. minilm, so that labels learned with different learners share the texts"})
    learn: str = field(default="labels", metadata={
        "help": "what is learned: labels (a class distribution per text), weights (one per text, mean 1, on the "
                "real hard labels) or both; the set keeps the weights beside the labels, and evaluation scales each "
                "text's loss by its weight"})
    # the default is what evaluation trains the set with: labels fitted to any other training fit a run that
    # never happens
    inner_recipe: str = field(default="learner", metadata={
        "help": "what is unrolled: learner (the learner's own evaluation recipe, whole: its optimizer, schedule and "
                "steps), sgd (inner_steps SGD steps at learned step sizes, bptt's inner loop; no evaluation trains "
                "so) or online (no unroll: each outer step trains the learner's recipe once and sums one-step "
                "look-ahead hypergradients along it, every probe_every steps; cheap enough for fine-tuned MiniLM "
                "on a CPU)"})
    probe_every: int = field(default=10, metadata={"ge": 1, "help": "online: training steps between look-ahead "
                                                                    "probes (each stands for that many steps)"})
    inner_steps: int = field(default=10, metadata={"ge": 1, "help": "sgd: unrolled SGD steps per outer step"})
    truncate: int = field(default=0, metadata={
        "ge": 0, "help": "back-propagate through the last k unrolled steps only (0: all); the steps before train "
                         "without a graph, so that a long recipe (fine-tuned MiniLM's) fits in memory"})
    also_learners: str = field(default="", metadata={
        "help": "more learners (comma-separated) trained on the labels beside the main one, their real losses "
                "summed: labels learned against several architectures at once (needs inner_recipe learner)"})
    outer_steps: int = field(default=100, metadata={"ge": 1, "help": "outer steps (one fresh learner each)"})
    outer_lr: float = field(default=0.05, metadata={"gt": 0, "help": "Adam learning rate of the label logits "
                                                                      "and log-weights"})
    init_lr: float = field(default=0.1, metadata={"gt": 0, "help": "initial inner SGD step size (learned)"})
    lr_lr: float = field(default=0.01, metadata={"gt": 0, "help": "Adam learning rate of the (softplus) step sizes"})
    confidence: float = field(default=3.0, metadata={"ge": 0, "help": "initial logit of each text's real class"})
    real_batch: int = field(default=256, metadata={"ge": 1, "help": "real examples per outer step (online: per probe)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.init not in INITS:
            raise ConfigError(f"init must be one of {', '.join(INITS)}, not {self.init!r}")
        if self.learn not in LEARNED:
            raise ConfigError(f"learn must be one of {', '.join(LEARNED)}, not {self.learn!r}")
        if self.inner_recipe not in INNER_RECIPES:
            raise ConfigError(f"inner_recipe must be one of {', '.join(INNER_RECIPES)}, not {self.inner_recipe!r}")
        for name in [self.init_learner, *self.also_learner_names()]:
            if name:
                get_learner(name)  # an unknown name fails here, before any work
        if self.inner_recipe == "sgd" and self.truncate > self.inner_steps:
            raise ConfigError(f"truncate ({self.truncate}) must be at most inner_steps ({self.inner_steps})")
        if self.also_learners and self.inner_recipe != "learner":
            raise ConfigError("also_learners needs inner_recipe learner: SGD step sizes belong to one learner")
        if self.inner_recipe == "online" and self.truncate:
            raise ConfigError("truncate does not apply to inner_recipe online: nothing is unrolled")

    def also_learner_names(self) -> list[str]:
        return [n.strip() for n in self.also_learners.split(",") if n.strip()]


def example_weights(log_weights: torch.Tensor) -> torch.Tensor:
    """Per-text weights n * softmax(log_weights): positive, mean 1."""
    return len(log_weights) * log_weights.softmax(0)


def weighted(rows: torch.Tensor, log_weights: torch.Tensor) -> torch.Tensor:
    """Label rows scaled by the per-text weights. The soft cross-entropy is linear in the target, so a row of mass
    w trains as its text counted w times, with any learner: the same loss as the set's rows with its weights
    (``losses.weighted_loss``), which is how evaluation trains the set."""
    return rows * example_weights(log_weights).unsqueeze(-1)


def label_meta_loss(learner: Learner, model: torch.nn.Module, inputs: dict[str, torch.Tensor],
                    labels: torch.Tensor, schedule: torch.Tensor | Recipe, real: dict[str, torch.Tensor],
                    real_y: torch.Tensor, seed: int, truncate: int = 0) -> torch.Tensor:
    """The real-data loss of ``model`` after training on the texts with ``labels`` (float [n, C]): the quantity
    whose gradient in whatever the labels are made of is the hypergradient (differentiable through the last
    ``truncate`` steps, all when 0). ``schedule``: SGD step sizes (one per unrolled step), or a recipe unrolled
    whole."""
    if isinstance(schedule, Recipe):
        trained: Params = train(learner, model, inputs, labels, schedule, seed=seed, differentiable=True,
                                truncate=truncate)
    else:
        trained = unroll(learner, model, inputs, labels, schedule, truncate, seed=seed)
    model.eval()  # the trained learner is tested as evaluation tests it: no dropout
    return F.cross_entropy(learner.forward(model, trained, real), real_y)


def lookahead_gradient(learner: Learner, model: torch.nn.Module, params: Params, inputs: dict[str, torch.Tensor],
                       precondition: Params, real: dict[str, torch.Tensor],
                       real_y: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(d L_real / d labels [n, C] one training step ahead of ``params``, per unit learning rate; L_real now).

    Ren et al. 2018's look-ahead: a step moves the parameters by -lr * precondition * g, and g, the gradient of
    the soft cross-entropy mean_i -sum_c y_ic log p_ic, is linear in the labels, so the real loss after the step
    changes with y_ic by lr / n * <precondition * grad L_real, grad log p_ic>: the derivative of log p_ic along
    one direction, one forward-mode pass (``torch.func.jvp``, exact: no step size to choose), no per-example
    gradients. ``precondition``: AdamW's 1 / (sqrt(v) + eps) per parameter (taken as fixed, momentum ignored).
    Both gradients are taken without dropout: the trained learner is tested without it."""
    model.eval()
    with learner.first_order(model):
        real_loss = F.cross_entropy(learner.forward(model, params, real), real_y)
        names = list(precondition)
        grads = torch.autograd.grad(real_loss, [params[k] for k in names], allow_unused=True)
    direction = {k: precondition[k] * g for k, g in zip(names, grads) if g is not None}
    primals = {k: params[k].detach() for k in direction}
    rest = {k: v.detach() for k, v in params.items() if k not in direction}

    def log_probs(moving: Params) -> torch.Tensor:  # eager attention: SDPA's CPU kernels have no forward mode
        return F.log_softmax(learner.forward(model, {**rest, **moving}, inputs), -1)

    _, along = torch.func.jvp(log_probs, (primals,), (direction,))
    return along / along.shape[0], float(real_loss.detach())


def online_label_gradient(learner: Learner, model: torch.nn.Module, inputs: dict[str, torch.Tensor],
                          labels: torch.Tensor, real: dict[str, torch.Tensor], real_y: torch.Tensor,
                          rng: np.random.Generator, real_size: int, every: int,
                          seed: int) -> tuple[torch.Tensor, float]:
    """One training run of the learner's recipe on (inputs, labels), in segments of ``every`` steps (its AdamW
    moments and step count carried on; each segment draws its own dropout and batch order), with a look-ahead
    probe after each: the sum of the probes, each weighted by the learning rates of the steps it stands for (a
    greedy, one-step-horizon hypergradient of the whole run), and the mean real loss seen."""
    recipe = learner.default_recipe
    if recipe.optimizer != "adamw":
        raise ConfigError(f"inner_recipe online follows AdamW recipes; {learner.name}'s is {recipe.optimizer}")
    b2, eps = recipe.betas[1], recipe.eps
    state: dict = {}
    params, total, losses = None, torch.zeros_like(labels), []
    for start in range(0, recipe.steps, every):
        lrs = torch.tensor([recipe.lr_at(s) for s in range(start, min(start + every, recipe.steps))])
        params = train(learner, model, inputs, labels, recipe, seed=seed * 100_003 + start, lrs=lrs, params=params,
                       optimizer=state)
        corrected = 1 - b2 ** state["taken"]
        # where v is 0 no text reached the parameter (a word the 20 texts lack): no label moves it
        precondition = {k: torch.where(v > 0, 1 / ((v / corrected).sqrt() + eps), 0.0) for k, v in state["v"].items()}
        idx = real_batch(rng, len(real_y), real_size)
        grad, loss = lookahead_gradient(learner, model, params, inputs, precondition, batch_of(real, idx), real_y[idx])
        total += float(lrs.sum()) * grad
        losses.append(loss)
    return total, float(np.mean(losses))


@register_method
class LearnedLabels(Distiller):
    name = "learned-labels"
    description = "coreset texts with class distributions learned through unrolled training (text, any learner)"
    Config = LearnedLabelsConfig

    def run(self, task: Task, dpc: int, learner: Learner, seed: int = 0) -> DistilledDataset:
        cfg = self.config
        picker = get_learner(cfg.init_learner).for_task(task) if cfg.init_learner else learner
        picked = get_method(cfg.init).distill(task, dpc, picker, seed=seed)
        learners = [learner, *(get_learner(n).for_task(task) for n in cfg.also_learner_names())]
        # each learner reads the texts and the training split its own way; the real batches share their rows
        views = [(each, picked.inputs_for(each), real_inputs(task, each)[0]) for each in learners]
        hard = picked.hard_labels
        torch.manual_seed(seed)  # for the whole run: Distiller.distill gives the caller its random state back
        rng = np.random.default_rng(seed)
        learn_labels, learn_weights = cfg.learn in ("labels", "both"), cfg.learn in ("weights", "both")
        logits = (F.one_hot(hard, task.num_classes).float() * cfg.confidence).requires_grad_(learn_labels)
        log_weights = torch.zeros(len(hard), requires_grad=learn_weights)

        def labels_now() -> torch.Tensor:
            rows = logits.softmax(-1) if learn_labels else F.one_hot(hard, task.num_classes).float()
            return weighted(rows, log_weights) if learn_weights else rows

        raw_lrs = torch.full((cfg.inner_steps,), inverse_softplus(cfg.init_lr), requires_grad=True)
        # "learner": what evaluation trains a text set with (its default recipe: the set carries none), so there
        # are no step sizes to learn
        by_recipe = cfg.inner_recipe in ("learner", "online")
        learned = [t for t, on in ((logits, learn_labels), (log_weights, learn_weights)) if on]
        opt = torch.optim.Adam([{"params": learned, "lr": cfg.outer_lr},
                                {"params": [] if by_recipe else [raw_lrs], "lr": cfg.lr_lr}])
        real_y = torch.tensor(task.columns("train")[2])
        history = []
        bar = progress_bar(range(cfg.outer_steps), desc=f"{self.name} {task.name} {dpc}/class", leave=False)
        for step in bar:
            opt.zero_grad()
            labels = labels_now()
            if cfg.inner_recipe == "online":  # a hypergradient summed along a run: no graph to back-propagate
                (_, inputs, real), = views
                grad, loss = online_label_gradient(learner, fresh_model(learner, task, seed, step), inputs,
                                                   labels.detach(), real, real_y, rng, cfg.real_batch,
                                                   cfg.probe_every, seed=step)
                check_finite(self.name, loss, step)
                labels.backward(grad)
            else:
                idx = real_batch(rng, len(real_y), cfg.real_batch)
                loss_t = sum(label_meta_loss(each, fresh_model(each, task, seed, step), inputs, labels,
                                             each.default_recipe if by_recipe else F.softplus(raw_lrs),
                                             batch_of(real, idx), real_y[idx], seed=step, truncate=cfg.truncate)
                             for each, inputs, real in views)
                loss = loss_t.item()
                check_finite(self.name, loss, step)
                loss_t.backward()
            opt.step()
            history.append(loss)
            bar.set_postfix(loss=f"{loss:.3f}")
        # the set: each text's class distribution, and its weight beside it (what labels_now folds into the row)
        rows = (logits.softmax(-1) if learn_labels else F.one_hot(hard, task.num_classes).float()).detach()
        per_example = {"weights": example_weights(log_weights).detach()} if learn_weights else {}
        log = {"real_loss": thin(history), "learned_with": "+".join(each.name for each in learners),  # losses summed
               "init_set": picked.fingerprint(), "picked_with": picker.name,
               **({"inner_recipes": {each.name: each.default_recipe.to_dict() for each in learners}} if by_recipe
                  else {"step_sizes": [round(float(x), 5) for x in F.softplus(raw_lrs.detach())]}),
               "learned": cfg.learn,
               "agrees_with_labels": float((rows.argmax(-1) == hard).float().mean()),
               "mean_top_probability": float(rows.max(-1).values.mean())}
        return self._artifact(task, seed, kind="text", texts=picked.texts, text_pairs=picked.text_pairs,
                              labels=rows, per_example=per_example, source_indices=picked.source_indices, log=log)
