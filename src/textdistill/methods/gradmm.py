"""gradmm (after GRADMM, Nguyen et al. 2025): gradient matching in a decoder LM's input-embedding space, pulled
onto real token sequences by ADMM, with the LM's own likelihood keeping the text readable.

Per class the synthetic examples are three variables: continuous embeddings E, token ids Z and a scaled dual U.
Each iteration (``admm``):
  (a) ``embed_steps`` Adam steps on E lower  match(E) + rho/(2P) ||E - emb(Z) + U||^2, where match is the distance
      between a loss gradient on the synthetic examples and on real examples of their class;
  (b) Z = the projection of E + U onto tokens, left to right with the LM reading the tokens chosen so far;
  (c) U += E - emb(Z), and rho adapts by residual balancing (Boyd et al. 2011, section 3.4.1).
P is the number of counted positions: averaged over them, the penalty keeps its size beside the O(1) matching
term whatever the set's size. The ADMM penalty parameter is then rho / P, and the dual residual that residual
balancing weighs against the primal one is scaled by it.

Two objectives (``objective``):
  classifier   the learner as a classifier: a fresh seeded head on the pretrained body each iteration, the
               parameters chosen by ``match``; the synthetic rows' own class labels.
  label-words  the reference's: the pretrained LM's next-token loss on the class's label word after a prompt
               ("<text> It was " -> "great"), the gradients of its output layer (lm_head) only. That gradient is
               A^T H (A: softmax minus one-hot over the vocabulary, H: the last hidden states), so the distances
               are computed from A and H without forming the [vocabulary, hidden] matrix, and the synthetic side
               needs no double backward.
and two projections (``projection``):
  likelihood   among the LM's top-k next tokens and the k tokens nearest the target, the one that maximises
               log p_LM(z | Z[:t]) - distance_weight * ||(E + U)_t - emb(z)||^2;
  nearest-topk the reference's: the LM's argmax among the k tokens of highest cosine to the target.
The reference's ADMM differs from the balanced one above in options of its own: ``project_first`` (Z from E + U
opens each iteration, the E steps follow, the dual uses that Z), ``penalty: sum`` (rho/2 ||.||^2 summed, rho
fixed), ``grad_clip`` (each independent run's embedding gradient clipped by norm), ``keep_best`` (the text is the
projection of the iterate with the lowest loss), ``group_size`` (a class's examples made in independent runs of
that many, each matching the class's real gradient), and ``init_candidates``/``noise_norm`` for its noise start.
The set is Z decoded: plain text that any learner trains on. Synthetic rows are left-padded, so the head reads
the last position (rotary positions make the left offset harmless).

Differential privacy (``dp_epsilon``, classifier objective): the real gradients of the matched tensors are
per-example clipped, summed with Gaussian noise (batches Poisson-sampled at a public rate, one release per
iteration, accounted by dp-accounting's RDP accountant; sampling and noise from a secure source, not the seed);
the synthetic text starts from noise and reads the private data through nothing else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..data import Task
from ..errors import ConfigError
from ..learners import Learner
from ..privacy import DPOptions, SecureRandom, publishable
from ..distilled import DistilledDataset
from ..progress import bar as progress_bar
from .base import (Distiller, MethodConfig, check_finite, class_indices, fresh_model, real_batch, register_method,
                   thin)
from .matching import class_gradients, class_real_gradient, gradient_distance, reached
from .learned_set import real_inputs


@dataclass
class GradmmConfig(MethodConfig, DPOptions):
    objective: str = field(default="classifier", metadata={
        "help": "classifier (a fresh head on the learner, its class labels) or label-words (the LM's next-token "
                "loss on the class's label word after --prompt, its output layer's gradient: the reference's)"})
    prompt: str = field(default=" It was ", metadata={
        "help": "label-words: the text between an example and its label word"})
    label_words: str = field(default="", metadata={
        "help": "label-words: one word per class, comma-separated, in the task's class order (empty: the class "
                "names); the loss reads each word's first token"})
    init: str = field(default="real", metadata={"help": "real (random real examples) or noise (refused with DP)"})
    init_candidates: int = field(default=1, metadata={
        "ge": 1, "help": "noise draws per independent run; the one with the lowest matching loss starts it"})
    noise_norm: float = field(default=0.0, metadata={
        "ge": 0, "help": "the norm each noise position is scaled to after the draw (0: noise at the token table's "
                         "scale, projected onto tokens before the first step)"})
    length: int = field(default=24, metadata={
        "ge": 0, "help": "tokens per synthetic example (at most; 0: the class's mean real length in tokens)"})
    iterations: int = field(default=20, metadata={"ge": 1, "help": "ADMM iterations"})
    embed_steps: int = field(default=3, metadata={"ge": 1, "help": "Adam steps on the embeddings per iteration"})
    lr: float = field(default=0.01, metadata={"gt": 0, "help": "Adam learning rate of the embeddings"})
    grad_clip: float = field(default=0.0, metadata={
        "ge": 0, "help": "clip each independent run's embedding gradient to this norm (0: off)"})
    rho: float = field(default=1.0, metadata={"gt": 0, "help": "initial ADMM penalty"})
    adaptive_rho: bool = field(default=True, metadata={"help": "residual balancing of rho"})
    penalty: str = field(default="mean", metadata={
        "help": "mean (rho/2 x the squared distance averaged over positions, the matching averaged over classes) "
                "or sum (rho/2 x the summed squared distance per run, the runs' losses summed: the reference's)"})
    project_first: bool = field(default=False, metadata={
        "help": "each iteration opens with the projection and its dual update uses it (the reference's order); "
                "the text is the projection of the final embeddings"})
    keep_best: bool = field(default=False, metadata={
        "help": "the text is the projection of each run's iterate with the lowest loss"})
    projection: str = field(default="likelihood", metadata={
        "help": "likelihood (LM log-likelihood minus distance_weight x the squared distance, over the LM's and "
                "the nearest top-k) or nearest-topk (the LM's argmax among the topk tokens of highest cosine)"})
    topk: int = field(default=32, metadata={"ge": 1, "help": "LM and nearest-token candidates per position"})
    distance_weight: float = field(default=1.0, metadata={"ge": 0, "help": "weight of the embedding distance "
                                                                          "against the LM log-likelihood (0: greedy LM)"})
    prefix: str = field(default="", metadata={
        "help": "what the LM reads before the tokens it projects, {label} standing for the class's label word "
                "(empty: its start token)"})
    vocabulary: str = field(default="all", metadata={
        "help": "tokens the projection may use: all (but special tokens) or words (the reference's filter: "
                "letters only, up to 17 characters, none of *;:_-'<>{}[]()/\\|=+%@~`^#$& or a newline)"})
    match: str = field(default="last", metadata={
        "help": "classifier: gradients matched: head, last (head + last block) or all (label-words matches the "
                "LM's output layer)"})
    distance: str = field(default="cos", metadata={
        "help": "cos (1 - cosine per row of each matrix), tensor-cos (1 - cosine per whole tensor, averaged: the "
                "reference's) or mse"})
    real_examples: int = field(default=0, metadata={
        "ge": 0, "help": "real training examples matched, a seeded stratified draw (0: all)"})
    real_batch: int = field(default=32, metadata={"ge": 1, "help": "real examples per class per iteration"})
    group_size: int = field(default=0, metadata={
        "ge": 0, "help": "a class's examples are made in independent runs of this many, each matching the class's "
                         "real gradient (0: one run per class)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, value, allowed in (("init", self.init, ("real", "noise")), ("match", self.match, MATCH),
                                     ("distance", self.distance, DISTANCES), ("objective", self.objective, OBJECTIVES),
                                     ("projection", self.projection, PROJECTIONS),
                                     ("vocabulary", self.vocabulary, ("all", "words")),
                                     ("penalty", self.penalty, ("mean", "sum"))):
            if value not in allowed:
                raise ConfigError(f"gradmm {name} must be one of {', '.join(allowed)}, not {value!r}")
        if self.dp_epsilon and self.init == "real":
            raise ConfigError("gradmm with dp_epsilon: init real copies private examples into the set; use --init "
                              "noise (only the clipped, noised gradients may read the private data)")
        if self.dp_epsilon and self.objective != "classifier":
            raise ConfigError("gradmm with dp_epsilon: only the classifier objective has a private mode (not "
                              f"{self.objective!r})")
        if self.dp_epsilon and self.real_examples:
            raise ConfigError("gradmm with dp_epsilon: real_examples must be 0 (the accountant samples the whole "
                              "training split)")


MATCH = ("head", "last", "all")
DISTANCES = ("cos", "tensor-cos", "mse")
OBJECTIVES = ("classifier", "label-words")
PROJECTIONS = ("likelihood", "nearest-topk")


def matched_names(learner: Learner, model: torch.nn.Module, match: str) -> list[str]:
    """The parameters whose gradients are matched: the head, the head and the last transformer block, or all."""
    trainable = [k for k, v in model.named_parameters() if v.requires_grad]
    if match == "all":
        return trainable
    head = learner.head_parameter_names(model)
    if match == "head":
        return head
    blocks = sorted({int(k.split("layers.")[1].split(".")[0]) for k in trainable if "layers." in k})
    if not blocks:
        raise ConfigError(f"gradmm match 'last': learner {learner.name!r} has no numbered transformer layers")
    last = f"layers.{blocks[-1]}."
    return [k for k in trainable if last in k or (k.endswith("norm.weight") and "layers." not in k)] + head


def left_to_right(lm: torch.nn.Module, mask: torch.Tensor, contexts: list[list[int]],
                  choose: Callable[[int, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Token ids [n, L] for the counted positions of ``mask`` (left-padded), filled left to right, all rows
    together: the LM reads each row's ``contexts`` (token ids, at least one) right before its first counted
    position, then the tokens chosen so far; ``choose(j, logits)`` gives every row's token at position j from the
    LM's next-token logits [n, V] (rows that do not count j ignore it). Each distinct context is read once, in one
    forward pass, and its cache shared by its rows; the rest goes one token at a time. Positions count only the
    tokens read, so padding shifts nothing. Padding keeps token 0."""
    n, length = mask.shape
    device = mask.device
    unique = list(dict.fromkeys(tuple(c) for c in contexts))
    width = max(len(c) for c in unique)
    block = torch.zeros(len(unique), width, dtype=torch.long, device=device)
    block_seen = torch.zeros_like(block)
    for i, ctx in enumerate(unique):
        block[i, width - len(ctx):] = torch.tensor(ctx, dtype=torch.long, device=device)
        block_seen[i, width - len(ctx):] = 1
    rows = torch.tensor([unique.index(tuple(c)) for c in contexts], device=device)
    z = torch.zeros(n, length, dtype=torch.long, device=device)
    with torch.no_grad():
        out = lm(input_ids=block, attention_mask=block_seen, position_ids=(block_seen.cumsum(1) - 1).clamp(min=0),
                 use_cache=True, logits_to_keep=1)
        cache = out.cache
        cache.batch_select_indices(rows)
        logits, seen = out.logits[rows, -1], block_seen[rows]
        for j in range(length):
            counted = mask[:, j].bool()
            z[:, j] = torch.where(counted, choose(j, logits), 0)
            if j + 1 < length:  # read the chosen tokens; a padded row keeps the logits of its last real token
                position = seen.sum(1, keepdim=True)
                seen = torch.cat([seen, mask[:, j:j + 1].to(seen.dtype)], 1)
                out = lm(input_ids=z[:, j:j + 1], attention_mask=seen, position_ids=position, cache=cache,
                         use_cache=True)
                cache = out.cache
                logits = torch.where(counted.unsqueeze(1), out.logits[:, -1], logits)
    return z


def projection(lm: torch.nn.Module, table: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
               start: int | list[list[int]], topk: int, distance_weight: float, banned: torch.Tensor) -> torch.Tensor:
    """Token ids [n, L] for target embeddings [n, L, d] whose counted positions (``mask``, left-padded) are
    filled left to right: each takes, among the LM's top-k next tokens and the k tokens nearest its target, the
    best of  log p(z | the tokens before) - distance_weight * ||target - emb(z)||^2. A row's LM context is the
    token id ``start`` (or its own list of ids) just before its first counted position. Padding keeps token 0."""
    sq_norms = (table**2).sum(-1)
    contexts = [[start]] * len(mask) if isinstance(start, int) else start

    def choose(j: int, logits: torch.Tensor) -> torch.Tensor:
        logp = logits.float().log_softmax(-1)
        logp[:, banned] = -torch.inf
        v = target[:, j].float()
        dist = sq_norms - 2 * v @ table.T + (v**2).sum(-1, keepdim=True)
        dist[:, banned] = torch.inf
        cands = torch.cat([logp.topk(topk).indices, dist.topk(topk, largest=False).indices], 1)
        score = logp.gather(1, cands) - distance_weight * dist.gather(1, cands)
        return cands.gather(1, score.argmax(1, keepdim=True)).squeeze(1)

    return left_to_right(lm, mask, contexts, choose)


def nearest_topk_projection(lm: torch.nn.Module, table: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                            contexts: list[list[int]], topk: int, banned: torch.Tensor) -> torch.Tensor:
    """The reference's projection: left to right, each counted position takes the LM's most likely next token
    among the ``topk`` allowed tokens of highest cosine similarity to its target (a hard filter, then the LM's
    argmax). ``contexts``: each row's token ids read before its first counted position. Padding keeps token 0."""
    unit = F.normalize(table.float(), dim=-1)

    def choose(j: int, logits: torch.Tensor) -> torch.Tensor:
        cos = F.normalize(target[:, j].float(), dim=-1) @ unit.T
        cos[:, banned] = -torch.inf
        near = cos.topk(topk).indices  # [n, k]
        return near.gather(1, logits.float().gather(1, near).argmax(1, keepdim=True)).squeeze(1)

    return left_to_right(lm, mask, contexts, choose)


WORD = re.compile(r"[a-z]+(?:['-][a-z]+)*")
NOT_IN_WORDS = set("*;:_\n-'<>:{}[]()/\\|=+%@~`^#$&")


def banned_tokens(tokenizer, rows: int, vocabulary: str) -> torch.Tensor:
    """Token ids the projection may not use: special tokens and the table's rows past the tokenizer's vocabulary
    (padding rows, added tokens); with
    ``words``, the reference's filter too: a token is kept when its text has none of ``NOT_IN_WORDS``, at most 17
    characters, and, lower-cased and stripped of spaces and of non-word characters at either end, is letters."""
    banned = set(tokenizer.all_special_ids) | set(range(tokenizer.vocab_size, rows))
    if vocabulary == "words":
        texts = tokenizer.batch_decode([[i] for i in range(min(tokenizer.vocab_size, rows))])
        for i, text in enumerate(texts):
            core = re.sub(r"^\W+|\W+$", "", text.lower().strip())
            if len(text) > 17 or any(c in NOT_IN_WORDS for c in text) or not WORD.fullmatch(core):
                banned.add(i)
    return torch.tensor(sorted(i for i in banned if i < rows), dtype=torch.long)


def last_hidden(lm: torch.nn.Module, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The LM body's final hidden state [n, d] at the last position of left-padded rows, in float32 (the body
    runs in its own dtype: a half-precision LM on a GPU reads the float32 embeddings cast down)."""
    dtype = lm.get_input_embeddings().weight.dtype
    return lm.base_model(inputs_embeds=embeds.to(dtype), attention_mask=mask).last_hidden_state[:, -1].float()


def output_layer(lm: torch.nn.Module) -> list[torch.Tensor]:
    """The LM's output layer as [weight] or [weight, bias] (detached, float32): the tensors label-words matches."""
    head = lm.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear):
        raise ConfigError(f"gradmm label-words: the LM's output layer is a {type(head).__name__}, not a linear map")
    return [head.weight.detach().float()] + ([head.bias.detach().float()] if head.bias is not None else [])


def label_word_residual(layer: list[torch.Tensor], hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """softmax(logits) - one-hot(targets) [n, V]: the derivative of each row's cross-entropy on its label word's
    token by its logits, which are the output layer applied to ``hidden``."""
    logits = F.linear(hidden, *layer)
    return logits.softmax(-1) - F.one_hot(targets, logits.shape[-1]).to(logits.dtype)


def output_gradient(layer: list[torch.Tensor], residual: torch.Tensor, hidden: torch.Tensor) -> list[torch.Tensor]:
    """The gradient of the mean cross-entropy over the rows by the output layer's tensors: the weight's
    residual^T hidden / n, the bias's column mean of the residual."""
    n = residual.shape[0]
    return [residual.T @ hidden / n] + ([residual.sum(0) / n] if len(layer) > 1 else [])


def output_distance(a: torch.Tensor, h: torch.Tensor, real: list[torch.Tensor], kind: str) -> torch.Tensor:
    """The distance between the output layer's gradient  W: a^T h, bias: a.sum(0)  (``a`` [n, V] the residuals
    divided by n, ``h`` [n, d]) and a dense ``real`` gradient, without forming a^T h: inner products through
    h @ W_real^T, squared norms through the n x n Gram matrices. Sized as ``Gradmm.distance``: tensor-cos the mean
    over tensors of 1 - cosine, cos the mean over the weight's rows (the bias adds nothing), mse relative to the
    real gradient's squared norm."""
    w = real[0]
    through = a * (h @ w.T)  # [n, V]: summed over n, row v's inner product with the real gradient
    gram_h = h @ h.T
    bias = a.sum(0) if len(real) > 1 else None
    if kind == "cos":
        sq_rows = ((gram_h @ a) * a).sum(0)  # [V]: row v's squared norm, a_v^T (h h^T) a_v
        cos = through.sum(0) / (sq_rows.clamp_min(1e-30).sqrt() * w.norm(dim=1) + 1e-8)
        return (1 - cos).sum() / w.shape[0]
    dot, sq = through.sum(), ((a @ a.T) * gram_h).sum()
    if kind == "mse":
        total = sq - 2 * dot + (w**2).sum()
        if bias is not None:
            total = total + ((bias - real[1]) ** 2).sum()
        return total / (sum((g**2).sum() for g in real) + 1e-12)
    terms = [1 - dot / (sq.clamp_min(1e-30).sqrt() * w.norm())]
    if bias is not None:
        terms.append(1 - (bias * real[1]).sum() / (bias.norm() * real[1].norm()))
    return sum(terms) / len(terms)


def tensor_cosine_distance(a: list[torch.Tensor | None], b: list[torch.Tensor | None]) -> torch.Tensor:
    """The reference's distance: the mean over tensors both sides reach of 1 - cosine of the whole tensors."""
    terms = [1 - (ga * gb).sum() / (ga.norm() * gb.norm()) for ga, gb in zip(a, b) if ga is not None and gb is not None]
    return sum(terms) / len(terms)


def admm(objective: Callable[[torch.Tensor, int], torch.Tensor], project: Callable[[torch.Tensor], torch.Tensor],
         embed: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, z: torch.Tensor, mask: torch.Tensor, *,
         iterations: int, embed_steps: int, lr: float, rho: float, adaptive_rho: bool, penalty: str = "mean",
         grad_clip: float = 0.0, runs: torch.Tensor | None = None, project_first: bool = False,
         keep_best: bool = False, progress: Callable[[int, dict], None] | None = None
         ) -> tuple[torch.Tensor, list[dict]]:
    """Scaled-form ADMM for  min f(x)  s.t.  x = embed(z), z discrete. ``objective(x, iteration)`` is f, a scalar
    or one value per independent run (``runs`` [n]: each row's run, 0..R-1; None: one run); ``project(v)``
    returns the z whose embedding is closest to v in its own sense; ``mask`` [n, L] marks the positions that count.

    penalty mean: f averaged over runs + rho/2 ||x - embed(z) + u||^2 averaged over the counted positions; sum:
    each run's f + rho/2 ||.||^2 summed, so that each run moves as it would alone (Adam is per element,
    ``grad_clip`` clips each run's gradient by its own norm). ``project_first``: z = project(x + u) opens each
    iteration and the dual update uses it; otherwise it follows the x steps. With ``keep_best`` (or
    ``project_first``) the final z is the projection of each run's iterate of lowest loss at its last x step (or
    of the last x). Returns the final z and one record per iteration (objective, residuals, rho)."""
    x = x.detach().clone().requires_grad_(True)
    u, rho0 = torch.zeros_like(x), rho
    m = mask.unsqueeze(-1).to(x.dtype)
    positions = float(mask.sum())  # the mean penalty averages over them: its ADMM parameter is rho / positions
    runs = torch.zeros(len(x), dtype=torch.long, device=x.device) if runs is None else runs.to(x.device)
    member = F.one_hot(runs).to(x.dtype)  # [n, R]
    opt = torch.optim.Adam([x], lr=lr)
    best_loss = torch.full((member.shape[1],), torch.inf, device=x.device)
    best_x = x.detach().clone()
    history = []
    for it in range(iterations):
        z_prev = z
        if project_first:
            z = project((x + u).detach())
        target = embed(z).detach()
        for _ in range(embed_steps):
            f = objective(x, it).reshape(-1)
            value = f.mean().item()
            check_finite("gradmm", value, it)
            per_run = member.T @ (((x - target + u) * m) ** 2).flatten(1).sum(1) * rho / 2
            if penalty == "mean":
                per_run = per_run / positions
                loss = f.mean() + per_run.sum()
            else:
                loss = f.sum() + per_run.sum()
            opt.zero_grad()
            loss.backward()
            if grad_clip:
                norms = (member.T @ (x.grad**2).flatten(1).sum(1)).sqrt()
                scale = torch.where(norms > grad_clip, grad_clip / (norms + 1e-6), torch.ones_like(norms))
                x.grad.mul_((member @ scale).view(-1, *[1] * (x.dim() - 1)))
            opt.step()
        if keep_best:  # each run's share of the loss at the last x step (before it), the x after it
            run_loss = (f.detach() / len(f) if penalty == "mean" else f.detach()) + per_run.detach()
            better = run_loss <= best_loss
            best_loss = torch.where(better, run_loss, best_loss)
            rows = (member @ better.to(x.dtype)).bool()
            best_x[rows] = x.detach()[rows]
        if not project_first:
            z = project((x + u).detach())
        fixed = embed(z).detach()
        u = u + (x.detach() - fixed) * m
        primal = float((((x.detach() - fixed) * m) ** 2).sum().sqrt())
        ratio = rho / positions if penalty == "mean" else rho
        dual = ratio * float((((fixed - embed(z_prev).detach()) * m) ** 2).sum().sqrt())
        history.append({"objective": value, "primal_residual": primal, "dual_residual": dual, "rho": rho,
                        "tokens_changed": int(((z != z_prev).reshape(*mask.shape, -1).any(-1) & mask.bool()).sum())})
        if adaptive_rho and primal > 10 * dual and rho < 1e3 * rho0:
            rho, u = rho * 2, u / 2
        elif adaptive_rho and dual > 10 * primal and rho > 1e-3 * rho0:
            rho, u = rho / 2, u * 2
        if progress:
            progress(it, history[-1])
    if keep_best:
        z = project(best_x)
    elif project_first:
        z = project(x.detach())
    return z, history


@register_method
class Gradmm(Distiller):
    name = "gradmm"
    description = "gradient matching in a decoder LM's embedding space, projected onto readable tokens by ADMM"
    Config = GradmmConfig
    uses_device = True
    default_learner = "smollm2-135m"  # it needs a decoder LM: the model whose gradients and likelihood it uses
    dp: dict | None = None  # the run's DP plan (classifier objective with dp_epsilon), set by its objective

    def run(self, task: Task, dpc: int, learner: Learner, seed: int = 0) -> DistilledDataset:
        from ..learners.transformer import DecoderLearner
        from ..lm import load_lm

        cfg = self.config
        if not isinstance(learner, DecoderLearner):
            raise ConfigError(f"gradmm matches gradients of a decoder LM and projects with its likelihood: use a "
                              f"decoder learner (smollm2-135m, or a causal LM id), not {learner.name!r}")
        texts, pairs, labels = task.columns("train")
        if pairs is not None:
            raise ConfigError("gradmm writes single texts; pair tasks are not supported yet")
        per_class = class_indices(labels, task.spec.classes, dpc)
        rng = np.random.default_rng(seed)
        torch.manual_seed(seed)  # for the whole run: Distiller.distill gives the caller its random state back
        lm = load_lm(learner.name, self.device).model
        tok = learner.tokenizer
        table = lm.get_input_embeddings().weight.detach().float()  # the learner's table too (same checkpoint)
        banned = banned_tokens(tok, table.shape[0], cfg.vocabulary).to(self.device)
        # what the LM reads before the first token
        start_id = next(i for i in (lm.config.bos_token_id, tok.bos_token_id, tok.eos_token_id, tok.cls_token_id, 0)
                        if i is not None)
        words = self.label_words(task)
        pool = self.real_pool(per_class, rng)  # the real rows each class's gradient reads
        prompt = tok(cfg.prompt, add_special_tokens=False)["input_ids"] if cfg.objective == "label-words" else []
        real_ids = ([self.real_ids(tok, texts, rows, cfg.prompt, len(prompt), learner.max_length) for rows in pool]
                    if cfg.objective == "label-words" else None)

        # the starting tokens, left-padded: real examples of the class, or (noise) every position of its length
        z, mask, source = self.start(task, per_class, pool, dpc, learner, table, rng, real_ids, len(prompt))
        hard = torch.arange(task.num_classes).repeat_interleave(dpc).to(self.device)
        per_run = cfg.group_size or dpc
        runs_per_class = -(-dpc // per_run)
        runs = (hard * runs_per_class + torch.arange(len(hard), device=self.device) % dpc // per_run)
        if cfg.prefix:
            contexts = [tok(cfg.prefix.replace("{label}", words[c]))["input_ids"] or [start_id] for c in hard.tolist()]
        else:
            contexts = [[start_id]] * len(hard)
        if cfg.projection == "likelihood":
            project = lambda v: projection(lm, table, v, mask, contexts, cfg.topk, cfg.distance_weight,  # noqa: E731
                                           banned)
        else:
            project = lambda v: nearest_topk_projection(lm, table, v, mask, contexts, cfg.topk, banned)  # noqa: E731

        if cfg.objective == "label-words":
            objective = self.label_word_objective(task, lm, tok, words, prompt, pool, real_ids, hard, runs, mask, rng)
        else:
            objective = self.classifier_objective(task, learner, pool, hard, runs, mask, seed, rng)

        x = table[z]
        if cfg.init == "noise":
            x = self.noise(objective, z.shape + (table.shape[1],), runs, table, seed)
            if not cfg.project_first:  # the balanced ADMM starts from tokens: the noise projected
                z = project(x)
                x = table[z]
        bar = progress_bar(total=cfg.iterations, desc=f"gradmm {task.name} {dpc}/class", leave=False)
        z, history = admm(objective, project, lambda ids: table[ids], x, z, mask, iterations=cfg.iterations,
                          embed_steps=cfg.embed_steps, lr=cfg.lr, rho=cfg.rho, adaptive_rho=cfg.adaptive_rho,
                          penalty=cfg.penalty, grad_clip=cfg.grad_clip, runs=runs, project_first=cfg.project_first,
                          keep_best=cfg.keep_best,
                          progress=lambda it, h: (bar.update(), bar.set_postfix(match=f"{h['objective']:.3f}",
                                                                                 changed=h["tokens_changed"])))
        bar.close()
        with torch.set_grad_enabled(cfg.objective == "classifier"):  # the matching loss of the text itself
            text_loss = float(objective(table[z], cfg.iterations - 1).detach().mean())
        out = [tok.decode(row[m.bool()].tolist(), skip_special_tokens=True).strip() for row, m in zip(z, mask)]
        # the ADMM record: per iteration, and the matching loss of the final text itself
        admm_log = {**{k: [h[k] for h in history] for k in history[0]}, "text_matching_loss": round(text_loss, 4)}
        log = {"admm": admm_log, "matching_loss": thin([h["objective"] for h in history])}
        if cfg.objective == "label-words":
            log["label_words"] = words
        ds = self._artifact(task, seed, kind="text", texts=out, labels=hard.cpu(), log=log,
                            **({"source_indices": source} if source else {}))
        return publishable(ds, task, self.dp) if self.dp else ds

    def label_words(self, task: Task) -> list[str]:
        """One word per class: ``label_words``, or the class names."""
        cfg = self.config
        words = [w.strip() for w in cfg.label_words.split(",")] if cfg.label_words else list(task.spec.classes)
        if len(words) != task.num_classes or not all(words):
            raise ConfigError(f"gradmm label_words {cfg.label_words!r}: give {task.num_classes} non-empty words, one "
                              f"per class of task {task.name!r} ({', '.join(task.spec.classes)})")
        return words

    def real_pool(self, per_class: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
        """Each class's real rows: all of them, or with ``real_examples`` a seeded stratified draw of that many
        (every class keeps at least one)."""
        n = self.config.real_examples
        if not n:
            return per_class
        total = sum(len(rows) for rows in per_class)
        return [np.sort(rng.choice(rows, size=min(len(rows), max(1, round(n * len(rows) / total))), replace=False))
                for rows in per_class]

    @staticmethod
    def real_ids(tok, texts: list[str], rows: np.ndarray, prompt: str, prompt_length: int,
                 max_length: int) -> list[list[int]]:
        """Token ids of the real examples as label-words reads them: text and prompt tokenised together (the
        reference's ``text + prompt``), the text cut at ``max_length`` tokens."""
        out = []
        for i in rows:
            ids = tok(texts[i] + prompt, add_special_tokens=False)["input_ids"]
            if len(ids) > max_length + prompt_length:
                ids = tok(texts[i], add_special_tokens=False)["input_ids"][:max_length]
                ids += tok(prompt, add_special_tokens=False)["input_ids"]
            out.append(ids)
        return out

    def start(self, task: Task, per_class: list[np.ndarray], pool: list[np.ndarray], dpc: int, learner: Learner,
              table: torch.Tensor, rng: np.random.Generator, real_ids: list[list[list[int]]] | None,
              prompt_length: int) -> tuple[torch.Tensor, torch.Tensor, list[int] | None]:
        """Starting token ids and masks [C * dpc, length], left-padded: real examples (truncated), or for noise
        every position of the class's length (``length``, or its mean real length: the reference counts text and
        prompt tokens, floors the mean and takes the prompt off), as the public length."""
        cfg = self.config
        texts, _, _ = task.columns("train")
        if cfg.init == "noise":
            if cfg.length:
                lengths = [cfg.length] * len(per_class)
            elif real_ids is not None:
                lengths = [max(1, int(np.mean([len(ids) for ids in rows])) - prompt_length) for rows in real_ids]
            else:
                lengths = [max(1, int(np.mean([len(learner.tokenizer(texts[i], add_special_tokens=False)["input_ids"])
                                               for i in rows]))) for rows in pool]
            width = max(lengths)
            mask = torch.zeros(len(per_class) * dpc, width, dtype=torch.long)
            for c, n in enumerate(lengths):
                mask[c * dpc:(c + 1) * dpc, width - n:] = 1
            return torch.zeros_like(mask).to(table.device), mask.to(table.device), None
        cap = cfg.length or learner.max_length
        picked = np.concatenate([rng.choice(rows, size=dpc, replace=False) for rows in per_class])
        ids = [learner.tokenizer(texts[i], add_special_tokens=False)["input_ids"][:cap] for i in picked]
        width = max(len(row) for row in ids) if not cfg.length else cfg.length
        z = torch.zeros(len(ids), width, dtype=torch.long)
        mask = torch.zeros(len(ids), width, dtype=torch.long)
        for r, row in enumerate(ids):
            z[r, width - len(row):] = torch.tensor(row, dtype=torch.long)
            mask[r, width - len(row):] = 1
        return z.to(table.device), mask.to(table.device), picked.tolist()

    def noise(self, objective: Callable[[torch.Tensor, int], torch.Tensor], shape: tuple[int, ...],
              runs: torch.Tensor, table: torch.Tensor, seed: int) -> torch.Tensor:
        """The noise start: Gaussian draws (at the table's scale, or unit ones scaled to ``noise_norm`` per
        position afterwards, as the reference); with ``init_candidates``, each run keeps its draw of lowest
        matching loss."""
        cfg = self.config
        gen = torch.Generator().manual_seed(seed)
        scale = table.std() if not cfg.noise_norm else 1.0
        best = torch.randn(shape, generator=gen).to(self.device) * scale
        if cfg.init_candidates > 1:
            member = F.one_hot(runs).to(best.dtype)
            with torch.set_grad_enabled(cfg.objective == "classifier"):
                best_loss = objective(best, 0).detach().reshape(-1)
                for _ in range(cfg.init_candidates - 1):
                    draw = torch.randn(shape, generator=gen).to(self.device) * scale
                    loss = objective(draw, 0).detach().reshape(-1)
                    rows = (member @ (loss < best_loss).to(best.dtype)).bool()
                    best[rows], best_loss = draw[rows], torch.minimum(loss, best_loss)
        return F.normalize(best, dim=-1) * cfg.noise_norm if cfg.noise_norm else best

    def distance(self, g_syn: list[torch.Tensor | None], g_real: list[torch.Tensor | None]) -> torch.Tensor:
        """The matching distance, sized O(1) beside the ADMM penalty: cos sums one term per matrix row (divided
        by the rows), tensor-cos is a mean over tensors, mse is relative to the real gradient's squared norm."""
        kind = self.config.distance
        if kind == "tensor-cos":
            return tensor_cosine_distance(g_syn, g_real)
        if kind == "cos":
            size = float(sum(g.shape[0] for g in g_real if g is not None and g.dim() > 1))
        else:
            size = float(sum((g**2).sum() for g in g_real if g is not None)) + 1e-12
        return gradient_distance(g_syn, g_real, kind) / size

    def classifier_objective(self, task: Task, learner: Learner, pool: list[np.ndarray], hard: torch.Tensor,
                             runs: torch.Tensor, mask: torch.Tensor, seed: int, rng: np.random.Generator
                             ) -> Callable[[torch.Tensor, int], torch.Tensor]:
        """Per run, the distance between the learner's gradient on the run's rows (a fresh seeded head each
        iteration, the pretrained body, the parameters chosen by ``match``) and a real batch of their class."""
        cfg = self.config
        real, real_y, _ = real_inputs(task, learner)
        self.dp = self.dp_plan(task) if cfg.dp_epsilon else None
        secure = SecureRandom() if self.dp else None  # the mechanism's draws: never from the set's seed
        state: dict = {}
        members = [torch.nonzero(runs == r).squeeze(1) for r in range(int(runs.max()) + 1)]

        def objective(x: torch.Tensor, it: int) -> torch.Tensor:
            if state.get("it") != it:  # a fresh head and fresh real gradients once per iteration
                model = fresh_model(learner, task, seed, it, self.device).eval()
                names = matched_names(learner, model, cfg.match)
                # only the matched tensors are leaves that take gradients: the rest of the body stays constant
                params = {**dict(model.named_buffers()), **{k: v.detach() for k, v in model.named_parameters()}}
                params.update({k: params[k].clone().requires_grad_(True) for k in names})
                # not the token table: the synthetic side reads embeddings
                names = reached(learner, model, params, names, {"inputs_embeds": x.detach(), "attention_mask": mask},
                                hard)
                g_real = [class_real_gradient(learner, model, params, names, real, real_y, rows, cfg.real_batch,
                                              self.dp, secure, rng, self.device)
                          for rows in pool]
                state.update(it=it, model=model, names=names, params=params, g_real=g_real)
            out = []
            for rows in members:
                c = int(hard[rows[0]])
                g_syn = class_gradients(learner, state["model"], state["params"], state["names"],
                                        {"inputs_embeds": x[rows], "attention_mask": mask[rows]}, hard[rows], True)
                out.append(self.distance(g_syn, state["g_real"][c]))
            return torch.stack(out)

        return objective

    def label_word_objective(self, task: Task, lm: torch.nn.Module, tok, words: list[str], prompt: list[int],
                             pool: list[np.ndarray], real_ids: list[list[list[int]]], hard: torch.Tensor,
                             runs: torch.Tensor, mask: torch.Tensor, rng: np.random.Generator
                             ) -> Callable[[torch.Tensor, int], torch.Tensor]:
        """Per run, the distance between the pretrained LM's output-layer gradient of its next-token loss on the
        class's label word, read after the run's rows and the prompt, and the same gradient averaged over real
        examples of the class (all of the class's pool when ``real_batch`` covers it, computed once; otherwise a
        fresh batch each iteration)."""
        cfg = self.config
        self.dp = None
        targets = [tok(w, add_special_tokens=False)["input_ids"][:1] for w in words]
        if len({tuple(t) for t in targets}) < len(words) or not all(targets):
            raise ConfigError(f"gradmm label_words {', '.join(words)}: each class's word needs its own first token "
                              f"(the loss reads only that one)")
        target = torch.tensor([t[0] for t in targets], device=self.device)
        layer = output_layer(lm)
        table = lm.get_input_embeddings().weight.detach().float()
        prompt_embeds = table[torch.tensor(prompt, dtype=torch.long, device=self.device)]
        members = [torch.nonzero(runs == r).squeeze(1) for r in range(int(runs.max()) + 1)]
        state: dict = {}

        def real_gradient(c: int, rows: np.ndarray) -> list[torch.Tensor]:
            sums = [torch.zeros_like(t) for t in layer]
            for chunk in np.array_split(np.asarray(rows), max(1, -(-len(rows) // 32))):
                ids = [real_ids[c][i] for i in chunk]
                width = max(len(r) for r in ids)
                batch = torch.zeros(len(ids), width, dtype=torch.long, device=self.device)
                seen = torch.zeros_like(batch)
                for r, row in enumerate(ids):
                    batch[r, width - len(row):] = torch.tensor(row, dtype=torch.long)
                    seen[r, width - len(row):] = 1
                with torch.no_grad():
                    h = last_hidden(lm, table[batch], seen)
                    if "checked" not in state:  # the loss must be the LM's own: its logits are this layer on h
                        own = lm(input_ids=batch[:2], attention_mask=seen[:2], logits_to_keep=1).logits[:, -1]
                        tol = 1e-3 if own.dtype == torch.float32 else 3e-2  # half precision: its own rounding
                        if not torch.allclose(F.linear(h[:2], *layer), own.float(), atol=tol, rtol=tol):
                            raise ConfigError("gradmm label-words: this LM's logits are not its output layer on "
                                              "its last hidden state; use another causal LM")
                        state["checked"] = True
                    grads = output_gradient(layer, label_word_residual(layer, h, target[[c] * len(ids)]), h)
                for s, g in zip(sums, grads):
                    s += g * len(ids)
            return [s / len(rows) for s in sums]

        def objective(x: torch.Tensor, it: int) -> torch.Tensor:
            if state.get("it") != it and not state.get("fixed"):
                g_real = []
                for c, rows in enumerate(pool):
                    picked = np.arange(len(rows)) if cfg.real_batch >= len(rows) else \
                        real_batch(rng, len(rows), cfg.real_batch).numpy()
                    g_real.append(real_gradient(c, picked))
                state.update(it=it, g_real=g_real, fixed=all(cfg.real_batch >= len(rows) for rows in pool))
            n = len(x)
            embeds = torch.cat([x, prompt_embeds.expand(n, -1, -1).to(x.dtype)], 1)
            seen = torch.cat([mask, torch.ones(n, len(prompt), dtype=mask.dtype, device=mask.device)], 1)
            h = last_hidden(lm, embeds, seen)
            residual = label_word_residual(layer, h, target[hard])
            out = []
            for rows in members:
                c = int(hard[rows[0]])
                out.append(output_distance(residual[rows] / len(rows), h[rows], state["g_real"][c], cfg.distance))
            return torch.stack(out)

        return objective

    def dp_plan(self, task: Task) -> dict:
        """The mechanism and its accounting, from public sizes only (the task's size and classes)."""
        cfg = self.config
        return cfg.dp_plan("Gaussian on clipped per-example loss gradients", cfg.real_batch, task.num_classes,
                           len(task.train), cfg.iterations)
