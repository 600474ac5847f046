"""The one training loop: functional AdamW over a learner's parameters, used by evaluation and inner loops.

A step is a pure function of (params, grads, state), so a bi-level method can differentiate through
it (``differentiable=True``) and evaluation can run it without a graph.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F
from torch.optim.adamw import adamw as adamw_functional

from .errors import TrainingDiverged
from .params import Params  # noqa: F401  (also imported from here by the methods)
from .progress import bar as progress_bar
from .recipe import Recipe
from .seeds import check_seed

if TYPE_CHECKING:
    from .learners.base import Learner
# A set's own training loss of a batch: (learner, model, parameters, batch inputs, batch labels, batch rows) -> loss
LossHook = Callable[..., torch.Tensor]


def loss_fn(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against hard labels (integer [n]) or label distributions (float [n, C])."""
    if not labels.dtype.is_floating_point:  # any integer dtype is class ids (int32 used to broadcast as "soft")
        return F.cross_entropy(logits, labels.long())
    return -(labels * F.log_softmax(logits, dim=-1)).sum(-1).mean()


def adamw_init(params: Params) -> dict[str, Params]:
    return {"m": {k: torch.zeros_like(v) for k, v in params.items()},
            "v": {k: torch.zeros_like(v) for k, v in params.items()}}


def adamw_step(params: Params, grads: Params, state: dict[str, Params], step: int, lr: float | torch.Tensor,
               recipe: Recipe) -> tuple[Params, dict[str, Params]]:
    """One AdamW step (decoupled weight decay, bias correction), returning new tensors: the same maths as
    ``torch.optim.AdamW``, differentiable with respect to params, grads and ``lr``. ``step`` counts from 1."""
    b1, b2 = recipe.betas
    c1, c2 = 1 - b1**step, 1 - b2**step
    new_p, new_m, new_v = {}, {}, {}
    for k, p in params.items():
        g = grads[k]
        m = b1 * state["m"][k] + (1 - b1) * g
        v = b2 * state["v"][k] + (1 - b2) * g * g
        # sqrt has an infinite derivative at 0: where a gradient entry is exactly 0 (so v is), take 0 as the
        # derivative instead of inf * 0 = nan; the value is sqrt's
        zero = v == 0
        denom = torch.where(zero, 0.0, (torch.where(zero, 1.0, v) / c2).sqrt()) + recipe.eps
        new_p[k] = p * (1 - lr * recipe.weight_decay) - lr * (m / c1) / denom
        new_m[k], new_v[k] = m, v
    return new_p, {"m": new_m, "v": new_v}


@torch.no_grad()
def adamw_step_(params: Params, grads: Params, state: dict[str, Params], step: int, lr: float,
                recipe: Recipe) -> None:
    """The same step in place, one fused kernel per tensor (``torch.optim.AdamW(fused=True)``'s): the fast path
    when no graph is needed. Measured on 2 cores with MiniLM: 5x faster than the multi-tensor ops it replaces,
    which streamed every 47 MB state tensor of the word embeddings about ten times per step."""
    keys = list(params)
    # the functional form of torch.optim.AdamW: it increments each step count before the update
    counts = [torch.tensor(float(step - 1)) for _ in keys]
    adamw_functional([params[k] for k in keys], [grads[k] for k in keys], [state["m"][k] for k in keys],
                     [state["v"][k] for k in keys], [], counts, fused=True, amsgrad=False, lr=lr,
                     beta1=recipe.betas[0], beta2=recipe.betas[1], weight_decay=recipe.weight_decay,
                     eps=recipe.eps, maximize=False)


def sgd_step(params: Params, grads: Params, lr: float | torch.Tensor, weight_decay: float = 0.0) -> Params:
    """Plain SGD with L2 weight decay (``torch.optim.SGD``'s maths), differentiable."""
    return {k: p - lr * (grads[k] + weight_decay * p) for k, p in params.items()}


@torch.no_grad()
def sgd_step_(params: Params, grads: Params, lr: float, weight_decay: float = 0.0) -> Params:
    for k, p in params.items():
        p.add_(grads[k] + weight_decay * p, alpha=-lr)
    return params


@contextmanager
def fast_kernels(learner: "Learner", model: torch.nn.Module, precision: str, device: str | torch.device):
    """Forwards that are differentiated at most once (evaluation's training and prediction): the learner's
    fastest kernels, under bf16 autocast when the recipe asks for it."""
    # no weight cache: it would keep each weight's first bf16 copy until the context exits, while the steps
    # inside it update the weights in place
    autocast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16",
                              cache_enabled=False)
    with learner.first_order(model), autocast:
        yield


def batch_of(inputs: dict[str, torch.Tensor], idx: torch.Tensor) -> dict[str, torch.Tensor]:
    """Rows of every input; token inputs are trimmed to the longest sequence in the batch."""
    out = {k: v[idx] for k, v in inputs.items()}
    if "attention_mask" in out:
        length = int(out["attention_mask"].sum(1).max())
        out = {k: v[:, :length] if v.dim() >= 2 and k != "features" else v for k, v in out.items()}
    return out


def train(
    learner: "Learner",
    model: torch.nn.Module,
    inputs: dict[str, torch.Tensor],
    labels: torch.Tensor,
    recipe: Recipe,
    *,
    seed: int,
    lrs: torch.Tensor | None = None,
    loss: LossHook | None = None,
    params: Params | None = None,
    differentiable: bool = False,
    truncate: int = 0,
    device: str | torch.device | None = None,
    progress: bool = False,
    optimizer: dict | None = None,
    losses: list[float] | None = None,
) -> Params:
    """Train ``model``'s parameters on (inputs, labels) and return them (the module is not modified).

    ``lrs`` gives one learning rate per step (a distilled schedule) instead of the recipe's.
    ``loss`` replaces the task loss of a batch (a set's own training loss, ``losses.set_loss``: example weights
    scale it, attention labels add a term).
    ``params`` starts from these parameters instead of the model's (to continue a run).
    With ``differentiable=True`` the returned parameters keep the graph back to ``inputs``, ``labels``
    and ``lrs``, for unrolled (bi-level) optimisation; ``truncate`` keeps it through the last ``truncate`` steps
    only (0: all), the steps before running as evaluation runs them (truncated back-propagation: a long recipe's
    graph would not fit in memory).
    ``optimizer`` (a dict, empty at first) keeps the AdamW moments and step count across calls, updated in place:
    segments of one run, as one ``torch.optim.AdamW`` stepped between other work (``params`` continues them).
    ``losses`` (a list) receives every step's training loss.
    """
    n = labels.shape[0]
    device = device or next(iter(inputs.values())).device  # default: where the inputs are (unrolled callers)
    batch_size = min(recipe.batch_size or 64, n)
    steps = len(lrs) if lrs is not None else recipe.steps
    gen = torch.Generator().manual_seed(check_seed(seed, "train"))
    torch.manual_seed(seed)  # dropout
    model.to(device).train(recipe.dropout)
    start = params if params is not None else dict(model.named_parameters())
    trainable = [k for k, v in model.named_parameters() if v.requires_grad]
    if differentiable and params is not None and not truncate:
        params = {k: start[k] for k in trainable}  # keep the graph of a previous segment
    else:
        params = {k: start[k].detach().clone().requires_grad_(True) for k in trainable}
    fixed = {k: v for k, v in model.named_parameters() if not v.requires_grad}
    fixed.update(dict(model.named_buffers()))
    inputs = {k: v.to(device) for k, v in inputs.items()}
    labels = labels.to(device)
    # A loaded set keeps its step sizes on the CPU; .to keeps the graph of unrolled callers.
    lrs = None if lrs is None else lrs.to(device)
    if optimizer is None:
        state = adamw_init(params) if recipe.optimizer == "adamw" else {}
    elif differentiable or recipe.optimizer != "adamw":
        raise ValueError("train(optimizer=...) continues AdamW without a graph only")
    else:
        if not optimizer:
            optimizer.update(adamw_init(params), taken=0)
        state = optimizer
    taken = state.get("taken", 0)  # steps an earlier segment took: AdamW's bias correction counts on
    order = torch.randperm(n, generator=gen)
    pos = 0
    # the steps from `graph_from` on keep the graph
    graph_from = (steps - min(truncate, steps) if truncate else 0) if differentiable else steps
    with ExitStack() as kernels:
        # Unrolled steps are differentiated twice, and a loss hook may need what only eager attention returns (a
        # hook that says `eager = False` runs the plain forward, as the loop's own loss does).
        if graph_from and (loss is None or not getattr(loss, "eager", True)):
            kernels.enter_context(fast_kernels(learner, model, recipe.precision, device))
        for step in progress_bar(range(steps), desc="train", leave=False, disable=not progress):
            if step == graph_from:
                kernels.close()
            if pos + batch_size > n:
                order, pos = torch.randperm(n, generator=gen), 0
            idx = order[pos : pos + batch_size].to(device)
            pos += batch_size
            batch, current = batch_of(inputs, idx), {**fixed, **params}
            value = (loss_fn(learner.forward(model, current, batch), labels[idx]) if loss is None
                     else loss(learner, model, current, batch, labels[idx], idx))
            if not torch.isfinite(value):
                raise TrainingDiverged(f"training loss became {value.item()} at step {step}: lower the learning rate")
            if losses is not None:
                losses.append(float(value.detach()))
            graph = step >= graph_from
            raw = torch.autograd.grad(value, list(params.values()), create_graph=graph, allow_unused=True)
            lr = lrs[step] if lrs is not None else recipe.lr_at(step)
            if graph:
                # A parameter the batch does not reach (word embeddings under inputs_embeds) is left as it is:
                # a zero gradient for it would stay in the graph every step (47 MB a step for MiniLM). The
                # unrolled callers train with SGD without weight decay, where a zero gradient changes nothing;
                # under AdamW or weight decay it skips that parameter's step (torch.optim skips it too).
                grads = {k: g for k, g in zip(params, raw) if g is not None}
                reached = {k: params[k] for k in grads}
                if recipe.optimizer == "sgd":
                    params = {**params, **sgd_step(reached, grads, lr, recipe.weight_decay)}
                else:
                    sub = {part: {k: state[part][k] for k in grads} for part in ("m", "v")}
                    new, sub = adamw_step(reached, grads, sub, step + 1, lr, recipe)
                    params = {**params, **new}
                    state = {part: {**state[part], **sub[part]} for part in ("m", "v")}
                continue
            # Without a graph a zero gradient is freed at once: keep evaluation's maths (weight decay and moments
            # for every parameter, reached or not), so its numbers do not change.
            grads = {k: torch.zeros_like(p) if g is None else g for (k, p), g in zip(params.items(), raw)}
            lr = float(lr.detach() if isinstance(lr, torch.Tensor) else lr)  # a learned step size, before the graph
            if recipe.optimizer == "sgd":
                sgd_step_(params, grads, lr, recipe.weight_decay)
            else:
                adamw_step_(params, grads, state, taken + step + 1, lr, recipe)
    if optimizer is not None:
        optimizer["taken"] = taken + steps
    return {**fixed, **params}


@torch.no_grad()
def predict(learner: "Learner", model: torch.nn.Module, params: Params, inputs: dict[str, torch.Tensor],
            batch_size: int = 128, device: str | torch.device = "cpu", precision: str = "float32") -> torch.Tensor:
    """Predicted class ids for every row of ``inputs`` (dropout off)."""
    return predict_logits(learner, model, params, inputs, batch_size, device, precision).argmax(-1)


@torch.no_grad()
def predict_logits(learner: "Learner", model: torch.nn.Module, params: Params, inputs: dict[str, torch.Tensor],
                   batch_size: int = 128, device: str | torch.device = "cpu", precision: str = "float32"
                   ) -> torch.Tensor:
    """Logits [n, C] for every row of ``inputs`` (dropout off). Token inputs go in batches of similar length
    (sorted, then put back in order), so that each batch is padded to little more than its own length."""
    model.to(device).eval()
    n = next(iter(inputs.values())).shape[0]
    mask = inputs.get("attention_mask")
    order = torch.arange(n) if mask is None else mask.sum(1).argsort(stable=True)
    out: torch.Tensor | None = None
    with fast_kernels(learner, model, precision, device):
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            batch = {k: v.to(device) for k, v in batch_of(inputs, idx).items()}
            logits = learner.forward(model, params, batch).float().cpu()
            if out is None:
                out = torch.empty(n, logits.shape[-1])
            out[idx] = logits
    assert out is not None
    return out
