"""gradmm (after GRADMM, Nguyen et al. 2025): gradient matching in a decoder LM's input-embedding space, pulled
onto real token sequences by ADMM, with the LM's own likelihood keeping the text readable.

Per class the synthetic examples are three variables: continuous embeddings E, token ids Z and a scaled dual U.
Each iteration (``admm``):
  (a) ``embed_steps`` Adam steps on E lower  match(E) + rho/(2P) ||E - emb(Z) + U||^2, where match is the distance
      between the learner's loss gradient on the synthetic examples and on a real batch of their class (a fresh
      seeded head each iteration, the pretrained body, the parameters chosen by ``match``);
  (b) Z = the projection of E + U onto tokens: left to right, among the LM's top-k next tokens and the k tokens
      nearest the target, the one that maximises  log p_LM(z | Z[:t]) - distance_weight * ||(E + U)_t - emb(z)||^2;
  (c) U += E - emb(Z), and rho adapts by residual balancing (Boyd et al. 2011, section 3.4.1).
P is the number of counted positions: averaged over them, the penalty keeps its size beside the O(1) matching
term whatever the set's size. The ADMM penalty parameter is then rho / P, and the dual residual that residual
balancing weighs against the primal one is scaled by it.
The set is Z decoded: plain text that any learner trains on. Synthetic rows are left-padded, so the head reads
the last position (rotary positions make the left offset harmless).

Differential privacy (``dp_epsilon``): the real gradients of the matched tensors are per-example clipped, summed
with Gaussian noise (batches Poisson-sampled at a public rate, one release per iteration, accounted by
dp-accounting's RDP accountant; sampling and noise from a secure source, not the seed); the synthetic text
starts from noise and reads the private data through nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from ..data import Task
from ..errors import ConfigError
from ..learners import Learner
from ..privacy import DPOptions, SecureRandom, publishable
from ..distilled import DistilledDataset
from ..progress import bar as progress_bar
from .base import Distiller, MethodConfig, check_finite, class_indices, fresh_model, register_method, thin
from .matching import class_gradients, class_real_gradient, gradient_distance, reached
from .learned_set import real_inputs


@dataclass
class GradmmConfig(MethodConfig, DPOptions):
    init: str = field(default="real", metadata={"help": "real (random real examples) or noise (refused with DP)"})
    length: int = field(default=24, metadata={"ge": 2, "help": "tokens per synthetic example (at most)"})
    iterations: int = field(default=20, metadata={"ge": 1, "help": "ADMM iterations"})
    embed_steps: int = field(default=3, metadata={"ge": 1, "help": "Adam steps on the embeddings per iteration"})
    lr: float = field(default=0.01, metadata={"gt": 0, "help": "Adam learning rate of the embeddings"})
    rho: float = field(default=1.0, metadata={"gt": 0, "help": "initial ADMM penalty"})
    adaptive_rho: bool = field(default=True, metadata={"help": "residual balancing of rho"})
    topk: int = field(default=32, metadata={"ge": 1, "help": "LM and nearest-token candidates per position"})
    distance_weight: float = field(default=1.0, metadata={"ge": 0, "help": "weight of the embedding distance "
                                                                          "against the LM log-likelihood (0: greedy LM)"})
    match: str = field(default="last", metadata={"help": "gradients matched: head, last (head + last block) or all"})
    distance: str = field(default="cos", metadata={"help": "cos (layer-wise 1 - cosine) or mse"})
    real_batch: int = field(default=32, metadata={"ge": 1, "help": "real examples per class per iteration"})

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, value, allowed in (("init", self.init, ("real", "noise")), ("match", self.match, MATCH),
                                     ("distance", self.distance, ("cos", "mse"))):
            if value not in allowed:
                raise ConfigError(f"gradmm {name} must be one of {', '.join(allowed)}, not {value!r}")
        if self.dp_epsilon and self.init == "real":
            raise ConfigError("gradmm with dp_epsilon: init real copies private examples into the set; use --init "
                              "noise (only the clipped, noised gradients may read the private data)")


MATCH = ("head", "last", "all")


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


def projection(lm: torch.nn.Module, table: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, start_id: int,
               topk: int, distance_weight: float, banned: torch.Tensor) -> torch.Tensor:
    """Token ids [n, L] for target embeddings [n, L, d] whose counted positions (``mask``, left-padded) are
    filled left to right: each takes, among the LM's top-k next tokens and the k tokens nearest its target, the
    best of  log p(z | the tokens before) - distance_weight * ||target - emb(z)||^2. All rows advance together:
    a row's LM context starts with ``start_id`` just before its first counted position (padding is masked; the
    LM's rotary positions make the left offset harmless). Padding keeps token 0."""
    n, length = mask.shape
    first = length - mask.sum(1)  # each row's first counted position
    z = torch.zeros(n, length, dtype=torch.long, device=table.device)
    sq_norms = (table**2).sum(-1)
    cache, seen = None, torch.zeros(n, 0, dtype=torch.long, device=table.device)
    with torch.no_grad():
        for t in range(length):
            prev = z[:, t - 1] if t else torch.zeros_like(first)
            step = torch.where(t == first, start_id, torch.where(t > first, prev, 0))
            seen = torch.cat([seen, (t >= first).long().unsqueeze(1)], 1)
            out = lm(input_ids=step.unsqueeze(1), attention_mask=seen, cache=cache, use_cache=True)
            cache = out.cache
            logp = out.logits[:, -1].float().log_softmax(-1)
            logp[:, banned] = -torch.inf
            dist = sq_norms - 2 * target[:, t].float() @ table.T + (target[:, t].float() ** 2).sum(-1, keepdim=True)
            dist[:, banned] = torch.inf
            cands = torch.cat([logp.topk(topk).indices, dist.topk(topk, largest=False).indices], 1)
            score = logp.gather(1, cands) - distance_weight * dist.gather(1, cands)
            z[:, t] = torch.where(mask[:, t].bool(), cands.gather(1, score.argmax(1, keepdim=True)).squeeze(1), 0)
    return z


def admm(objective: Callable[[torch.Tensor, int], torch.Tensor], project: Callable[[torch.Tensor], torch.Tensor],
         embed: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, z: torch.Tensor, mask: torch.Tensor, *,
         iterations: int, embed_steps: int, lr: float, rho: float, adaptive_rho: bool,
         progress: Callable[[int, dict], None] | None = None) -> tuple[torch.Tensor, list[dict]]:
    """Scaled-form ADMM for  min f(x)  s.t.  x = embed(z), z discrete. ``objective(x, iteration)`` is f;
    ``project(v)`` returns the z whose embedding is closest to v in its own sense; ``mask`` [n, L] marks the
    positions that count. Returns the final z and one record per iteration (objective, residuals, rho)."""
    x = x.detach().clone().requires_grad_(True)
    u, rho0 = torch.zeros_like(x), rho
    m = mask.unsqueeze(-1).to(x.dtype)
    positions = float(mask.sum())  # the penalty averages over them: its ADMM parameter is rho / positions
    opt = torch.optim.Adam([x], lr=lr)
    history = []
    for it in range(iterations):
        target = embed(z).detach()
        for _ in range(embed_steps):
            f = objective(x, it)
            value = f.item()
            check_finite("gradmm", value, it)
            loss = f + rho / 2 * (((x - target + u) * m) ** 2).sum() / positions
            opt.zero_grad()
            loss.backward()
            opt.step()
        z_prev, z = z, project((x + u).detach())
        fixed = embed(z).detach()
        u = u + (x.detach() - fixed) * m
        primal = float((((x.detach() - fixed) * m) ** 2).sum().sqrt())
        dual = rho / positions * float((((fixed - embed(z_prev).detach()) * m) ** 2).sum().sqrt())
        history.append({"objective": value, "primal_residual": primal, "dual_residual": dual, "rho": rho,
                        "tokens_changed": int(((z != z_prev).reshape(*mask.shape, -1).any(-1) & mask.bool()).sum())})
        if adaptive_rho and primal > 10 * dual and rho < 1e3 * rho0:
            rho, u = rho * 2, u / 2
        elif adaptive_rho and dual > 10 * primal and rho > 1e-3 * rho0:
            rho, u = rho / 2, u * 2
        if progress:
            progress(it, history[-1])
    return z, history


@register_method
class Gradmm(Distiller):
    name = "gradmm"
    description = "gradient matching in a decoder LM's embedding space, projected onto readable tokens by ADMM"
    Config = GradmmConfig
    uses_device = True
    default_learner = "smollm2-135m"  # it needs a decoder LM: the model whose gradients and likelihood it uses

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
        banned = torch.tensor(sorted(set(tok.all_special_ids)), dtype=torch.long, device=self.device)
        # what the LM reads before the first token
        start_id = next(i for i in (lm.config.bos_token_id, tok.bos_token_id, tok.eos_token_id, tok.cls_token_id, 0)
                        if i is not None)

        # the starting tokens, left-padded to `length`: real examples of the class, or the LM's projection of noise
        z, mask, source = self.start(task, per_class, dpc, learner, table, rng)
        hard = torch.arange(task.num_classes).repeat_interleave(dpc).to(self.device)
        project = lambda v: projection(lm, table, v, mask, start_id, cfg.topk, cfg.distance_weight, banned)  # noqa: E731
        if cfg.init == "noise":
            noise = torch.randn(z.shape + (table.shape[1],), generator=torch.Generator().manual_seed(seed))
            z = project(noise.to(self.device) * table.std())
        real, real_y, _ = real_inputs(task, learner)
        dp = self.dp_plan(task) if cfg.dp_epsilon else None
        secure = SecureRandom() if dp else None  # the mechanism's draws: never from the set's seed
        state: dict = {}

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
                g_real = [class_real_gradient(learner, model, params, names, real, real_y, rows, cfg.real_batch, dp,
                                              secure, rng, self.device)
                          for rows in per_class]
                state.update(it=it, model=model, names=names, params=params, g_real=g_real)
            total = x.new_zeros(())
            for c in range(task.num_classes):
                own = slice(c * dpc, (c + 1) * dpc)
                g_syn = class_gradients(learner, state["model"], state["params"], state["names"],
                                        {"inputs_embeds": x[own], "attention_mask": mask[own]}, hard[own], True)
                total = total + gradient_distance(g_syn, state["g_real"][c], cfg.distance) / scale(state["g_real"][c])
            return total / task.num_classes

        def scale(g_real: list[torch.Tensor]) -> float:
            """The distance's size, so that the matching term is O(1) beside the ADMM penalty: cos sums one term
            per matrix row; mse is taken relative to the real gradient's squared norm."""
            if cfg.distance == "cos":
                return float(sum(g.shape[0] for g in g_real if g.dim() > 1))
            return float(sum((g**2).sum() for g in g_real)) + 1e-12

        bar = progress_bar(total=cfg.iterations, desc=f"gradmm {task.name} {dpc}/class", leave=False)
        z, history = admm(objective, project, lambda ids: table[ids], table[z], z, mask, iterations=cfg.iterations,
                          embed_steps=cfg.embed_steps, lr=cfg.lr, rho=cfg.rho, adaptive_rho=cfg.adaptive_rho,
                          progress=lambda it, h: (bar.update(), bar.set_postfix(match=f"{h['objective']:.3f}",
                                                                                 changed=h["tokens_changed"])))
        bar.close()
        out = [tok.decode(row[m.bool()].tolist(), skip_special_tokens=True).strip() for row, m in zip(z, mask)]
        log = {"admm": {k: [h[k] for h in history] for k in history[0]} if history else {},
               "matching_loss": thin([h["objective"] for h in history])}
        ds = self._artifact(task, seed, kind="text", texts=out, labels=hard.cpu(), log=log,
                            **({"source_indices": source} if source else {}))
        return publishable(ds, task, dp) if dp else ds

    def start(self, task: Task, per_class: list[np.ndarray], dpc: int, learner: Learner, table: torch.Tensor,
              rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, list[int] | None]:
        """Starting token ids and masks [C * dpc, length], left-padded: real examples (truncated), or for noise
        every position, as the public length."""
        cfg = self.config
        n = len(per_class) * dpc
        if cfg.init == "noise":
            ones = torch.ones(n, cfg.length, dtype=torch.long, device=table.device)
            return ones * 0, ones, None
        texts, _, _ = task.columns("train")
        picked = np.concatenate([rng.choice(rows, size=dpc, replace=False) for rows in per_class])
        ids = [learner.tokenizer(texts[i], add_special_tokens=False)["input_ids"][: cfg.length] for i in picked]
        z = torch.zeros(n, cfg.length, dtype=torch.long)
        mask = torch.zeros(n, cfg.length, dtype=torch.long)
        for r, row in enumerate(ids):
            z[r, cfg.length - len(row):] = torch.tensor(row)
            mask[r, cfg.length - len(row):] = 1
        return z.to(table.device), mask.to(table.device), picked.tolist()

    def dp_plan(self, task: Task) -> dict:
        """The mechanism and its accounting, from public sizes only (the task's size and classes)."""
        cfg = self.config
        return cfg.dp_plan("Gaussian on clipped per-example loss gradients", cfg.real_batch, task.num_classes,
                           len(task.train), cfg.iterations)
