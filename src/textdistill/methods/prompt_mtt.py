"""prompt-mtt (after Yao et al. 2025, "Transferable text data distillation by trajectory matching"): instructions
learned as input embeddings of a causal LM by trajectory matching against experts fine-tuned on the whole
instruction data, kept near real tokens by a regulariser, then written as the nearest tokens' text, which any
causal LM (another architecture too) fine-tunes on.

The paper's loss, matched parameters and regulariser are not available here; this module designs them the MTT way
(Cazenavette et al. 2022, as ``mtt`` does for classifiers):

- Experts: ``experts`` runs of plain SGD (constant ``expert_lr``, batches of ``expert_batch``, no dropout) of the
  pretrained LM on the response loss (``learners.causal_lm.response_losses``: next-token loss on the response
  only, as the ``*-lm`` learners fine-tune) over a seeded subsample of ``expert_pool`` rows of the training split
  (expert i draws its own), the matched parameters saved after each of ``expert_epochs`` epochs (epoch 0: the
  pretrained ones). They are cached as safetensors, one file per expert, keyed by the task, the LM and the expert
  settings, so a rerun (and another set seed) reuses them.
- Matched parameters: the top ``matched_layers`` transformer blocks and the final norm; everything else (the lower
  blocks, the token table, the output layer) stays at the pretrained weights, in the experts and in the students.
  That is a cut for the CPU (``matched_layers: all`` matches every block, for a GPU): with the lower blocks frozen,
  their output on a batch does not depend on the matched parameters, so it is computed once per batch (per outer
  step on the synthetic set, once per expert on its pool) and only the top blocks run in the inner steps. A check
  on the first batch refuses an LM whose forward cannot be split so (use ``matched_layers: all`` there).
- The synthetic set: ``dpc`` real rows per class (the class is the right answer's position, A-E), seeded. Each row
  is read as lm_batch reads a pair ([start] instruction response [eos], right-padded, cut at ``max_length``): its
  instruction positions are learned input embeddings (initialised at the row's token embeddings), the start token
  and the response stay the LM's own token embeddings (the real answer is kept: what is distilled is the prompt
  that teaches it). One learned step size, as a log learning rate.
- Outer step: a random expert and start epoch t in [0, ``max_start_epoch``]; the student starts at the expert's
  epoch t and takes ``syn_steps`` differentiable SGD steps (``torch.func.functional_call`` on the matched
  parameters, the frozen ones as they are) on the synthetic rows; the loss is
  ||theta_student - theta_expert(t+M)||^2 / ||theta_expert(t) - theta_expert(t+M)||^2 (M = ``match_epochs``)
  plus ``reg_weight`` x the regulariser; Adam on the embeddings (``lr_embeddings``) and on the log step size
  (``lr_lr``).
- The regulariser: the mean over learned positions of ||e - emb(z)||^2 / ||emb(z)||^2, z being the token the final
  projection will pick for e (the cosine-nearest one, special tokens excluded). Why not 1 - max cosine: the
  projection replaces e by exactly emb(z), and the LM reads the vector's norm as well as its direction; a
  cosine term is 0 along the whole ray through a token, so a set could keep its projection while drifting away
  from what the projected text gives the LM. This distance is 0 exactly at token embeddings, grows away from them,
  measures the very replacement the projection makes, and being relative to the token's norm it means the same
  for any LM's table scale.
- The end: every learned position becomes its cosine-nearest token (the LM's input table, special tokens
  excluded), each row's tokens are decoded to its instruction text, and the set is kind "text": texts = the
  instructions, text_pairs = the rows' real responses, labels = their answer positions. The log holds the matching
  loss curve, the regulariser's, the learned step size, the share of learned positions whose token changed, the
  share of texts that re-encode to their tokens, and the matching loss (over every expert and start epoch) of the
  initial rows, of the learned embeddings and of the projected tokens: the gap between the last two is what the
  regulariser is for.

Other cuts: float32 throughout; every parameter of a matched block trains (a third-party summary of the paper says
its experts were trained with LoRA); the unrolled steps use torch's plain attention kernel (the fused ones have no
double backward); the set trains a learner with that learner's own recipe (the learned step size stays in the
log). On the CPU defaults (2 of SmolLM2's 30 blocks) a few dozen outer steps move the embeddings too little for
any position to change its nearest token: the text is then the initial real rows; check ``tokens_changed``.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..atomic import atomic_write
from ..cache import build_lock, in_use, key_of
from ..data import Task
from ..distilled import DistilledDataset
from ..errors import ConfigError
from ..learners import Learner
from ..learners.causal_lm import CausalLMLearner, lm_batch, load_causal_lm, response_losses
from ..progress import bar as progress_bar
from ..resources import cache_dir, model_revision
from .base import Distiller, MethodConfig, class_indices, descend, register_method, thin
from .trajectory import epoch_params, trajectory_loss as matching_loss  # over the matched blocks

EXPERT_SEED = 10_000  # expert i draws its pool rows and batch orders from EXPERT_SEED + i, never from the set's seed


@dataclass
class PromptMTTConfig(MethodConfig):
    lm: str = field(default="smollm2-135m", metadata={
        "help": "the causal LM whose input embeddings are learned and whose fine-tuning is matched (a named LM, "
                "a folder or a hub id)"})
    matched_layers: str = field(default="2", metadata={
        "help": "the top N transformer blocks (and the final norm) that experts and students train, or all; the "
                "rest stays at the pretrained weights"})
    max_length: int = field(default=0, metadata={
        "ge": 0, "help": "tokens per row (start, instruction, response, end); a long row keeps the end of its "
                         "instruction (0: the task's max_length)"})
    expert_pool: int = field(default=256, metadata={"ge": 1, "help": "real rows each expert fine-tunes on"})
    experts: int = field(default=2, metadata={"ge": 1, "help": "expert trajectories"})
    expert_epochs: int = field(default=3, metadata={"ge": 1, "help": "epochs each expert trains on its pool"})
    expert_lr: float = field(default=0.01, metadata={"gt": 0, "help": "the experts' SGD step size"})
    expert_batch: int = field(default=16, metadata={"ge": 1, "help": "the experts' batch size"})
    max_start_epoch: int = field(default=1, metadata={
        "ge": 0, "help": "students start at an expert epoch from 0 to this"})
    match_epochs: int = field(default=1, metadata={"ge": 1, "help": "M: match the expert this many epochs later"})
    syn_steps: int = field(default=10, metadata={"ge": 1, "help": "S: student steps on the synthetic rows"})
    syn_batch: int = field(default=0, metadata={"ge": 0, "help": "synthetic rows per student step (0: all)"})
    iterations: int = field(default=100, metadata={"ge": 1, "help": "outer steps"})
    lr_embeddings: float = field(default=0.005, metadata={"gt": 0, "help": "Adam learning rate of the embeddings"})
    lr_lr: float = field(default=0.01, metadata={"gt": 0, "help": "Adam learning rate of the log step size"})
    init_lr: float = field(default=0.0, metadata={
        "ge": 0, "help": "the students' initial step size, learned (0: the experts')"})
    reg_weight: float = field(default=1.0, metadata={
        "ge": 0, "help": "weight of the regulariser (relative squared distance to the token each position "
                         "projects to)"})
    buffer_dir: str = field(default="", metadata={"help": "where expert trajectories live (default: the cache)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        value = str(self.matched_layers).strip().lower()
        if value != "all" and not (value.isdigit() and int(value) >= 1):
            raise ConfigError(f"prompt-mtt matched_layers must be all or a whole number >= 1, got "
                              f"{self.matched_layers!r}")
        self.matched_layers = value
        if self.max_start_epoch + self.match_epochs > self.expert_epochs:
            raise ConfigError(f"prompt-mtt needs max_start_epoch + match_epochs <= expert_epochs, got "
                              f"{self.max_start_epoch} + {self.match_epochs} > {self.expert_epochs}")


class _Reached(Exception):
    """Raised by a hook to stop a forward pass at the first matched block, once its input is known."""


class _Held(torch.nn.Module):
    """Stands in for a frozen lower block: returns the hidden state held for the batch (the lower blocks' output,
    computed once), whatever it is given. The model's own loop then reaches the first matched block with it."""

    def __init__(self, block: torch.nn.Module, held: dict) -> None:
        super().__init__()
        self.held = held
        if hasattr(block, "attention_type"):  # models that pick a mask per block (sliding-window layers) read it
            self.attention_type = block.attention_type

    def forward(self, hidden_states, *args, **kwargs):
        return self.held["value"]


class ResponseLM:
    """A causal LM seen as what prompt-mtt trains: the matched parameters (top blocks and final norm), the frozen
    rest, and the per-row response loss of a batch of input embeddings under given matched parameters."""

    def __init__(self, model: torch.nn.Module, matched_layers: str) -> None:
        self.model = model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        self.table = model.get_input_embeddings().weight.detach()
        self.head = model.get_output_embeddings()
        layers = getattr(model.config, "num_hidden_layers", None)
        found = [(name, m) for name, m in model.base_model.named_modules()
                 if isinstance(m, torch.nn.ModuleList) and len(m) == layers]
        if not found:
            raise ConfigError(f"prompt-mtt: found no list of {layers} transformer blocks in "
                              f"{type(model).__name__}")
        prefix, self.blocks = found[0]
        k = len(self.blocks) if matched_layers == "all" else int(matched_layers)
        if k > len(self.blocks):
            raise ConfigError(f"prompt-mtt matched_layers {k}: the LM has {len(self.blocks)} transformer blocks")
        self.first = len(self.blocks) - k
        base = model.base_model_prefix
        inside = {f"{base}.{prefix}.{i}." for i in range(len(self.blocks))}
        top = tuple(f"{base}.{prefix}.{i}." for i in range(self.first, len(self.blocks)))
        norms = {f"{base}.{n}." for n, m in model.base_model.named_modules()
                 if "norm" in type(m).__name__.lower() and not any(f"{base}.{n}.".startswith(b) for b in inside)}
        self.names = [n for n, _ in model.named_parameters()
                      if n.startswith(top) or any(n.startswith(m) for m in norms)]
        self.held: dict = {}

    def pretrained(self) -> dict[str, torch.Tensor]:
        params = dict(self.model.named_parameters())
        return {k: params[k].detach().clone() for k in self.names}

    def lower(self, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | None:
        """The input of the first matched block for a batch (differentiable in ``embeds``); None when every block
        is matched."""
        if self.first == 0:
            return None
        seen: dict = {}

        def catch(module, args, kwargs):
            seen["h"] = args[0] if args else kwargs["hidden_states"]
            raise _Reached

        handle = self.blocks[self.first].register_forward_pre_hook(catch, with_kwargs=True)
        try:
            self.model.base_model(inputs_embeds=embeds, attention_mask=mask, use_cache=False)
        except _Reached:
            pass
        finally:
            handle.remove()
        return seen["h"]

    def losses(self, params: dict[str, torch.Tensor], embeds: torch.Tensor, mask: torch.Tensor,
               labels: torch.Tensor, lower: torch.Tensor | None = None) -> torch.Tensor:
        """Per-row mean next-token loss of the response tokens [n] with the matched parameters ``params``; logits
        are computed at the response positions only, then laid out for ``response_losses``. ``lower``: the
        batch's :meth:`lower` (computed here when None)."""
        if self.first and lower is None:
            lower = self.lower(embeds, mask)
        blocks = list(self.blocks)
        if self.first:
            self.held["value"] = lower
            for i in range(self.first):
                self.blocks[i] = _Held(blocks[i], self.held)
        try:
            # the lower blocks' input is dropped by the stand-ins: no gradient needs to go that way
            hidden = torch.func.functional_call(
                self.model.base_model, {k[len(self.model.base_model_prefix) + 1:]: v for k, v in params.items()},
                (), {"inputs_embeds": embeds.detach() if self.first else embeds, "attention_mask": mask,
                     "use_cache": False}, strict=False).last_hidden_state
        finally:
            for i in range(self.first):
                self.blocks[i] = blocks[i]
            self.held.clear()
        target = labels[:, 1:] != -100  # position j predicts token j + 1
        rows, cols = target.nonzero(as_tuple=True)
        slot = target.long().cumsum(1)[rows, cols] - 1
        width = int(slot.max()) + 2 if len(slot) else 2
        logits = self.head(hidden[rows, cols])  # the output layer is never matched (often it is the token table)
        packed = logits.new_zeros(len(labels), width, logits.shape[-1]).index_put((rows, slot), logits)
        packed_labels = torch.full((len(labels), width), -100, dtype=labels.dtype, device=labels.device)
        packed_labels[rows, slot + 1] = labels[rows, cols + 1]
        return response_losses(packed, packed_labels)

    def check_split(self, embeds: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, lm: str) -> None:
        """Refuse an LM whose loss computed this way differs from its own forward's (logit scaling, soft-capping,
        a forward that cannot start at a block)."""
        with torch.no_grad():
            own = response_losses(self.model(inputs_embeds=embeds, attention_mask=mask, use_cache=False).logits,
                                  labels)
            here = self.losses(self.pretrained(), embeds, mask, labels)
        if not torch.allclose(own, here, rtol=1e-3, atol=1e-4):
            raise ConfigError(f"prompt-mtt: the response loss of LM {lm!r} computed from block {self.first} differs "
                              f"from its own forward's ({here.tolist()} vs {own.tolist()}); use matched_layers: all "
                              "or another causal LM")


def unroll(lm: ResponseLM, start: dict[str, torch.Tensor], embeds: torch.Tensor, mask: torch.Tensor,
           labels: torch.Tensor, lr: torch.Tensor, steps: int, batch: int, gen: torch.Generator,
           differentiable: bool = True) -> dict[str, torch.Tensor]:
    """The student: ``steps`` SGD steps of the matched parameters from ``start`` on the rows (all of them, or
    ``batch`` drawn by ``gen`` each step), kept differentiable in the embeddings and ``lr``."""
    lower = lm.lower(embeds, mask)
    params = {k: v.clone().requires_grad_(True) for k, v in start.items()}
    n = len(labels)
    # torch's fused attention kernels have no double backward: the unrolled steps take the plain (math) one
    with sdpa_kernel([SDPBackend.MATH]) if differentiable else contextlib.nullcontext():
        for _ in range(steps):
            rows = torch.randperm(n, generator=gen)[:batch].to(labels.device) if 0 < batch < n else None
            pick = (lambda t: t) if rows is None else (lambda t: t[rows])  # noqa: E731
            loss = lm.losses(params, pick(embeds), pick(mask), pick(labels),
                             None if lower is None else pick(lower)).mean()
            grads = torch.autograd.grad(loss, list(params.values()), create_graph=differentiable)
            params = {k: v - lr * g for (k, v), g in zip(params.items(), grads)}
            if not differentiable:
                params = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    return params


def projectable(tokenizer, rows: int, device: str = "cpu") -> torch.Tensor:
    """Which rows of the LM's input table a position may become [rows]: not special tokens, nor the rows past the
    tokenizer's vocabulary (padding rows of the table)."""
    allowed = torch.ones(rows, dtype=torch.bool)
    allowed[min(rows, tokenizer.vocab_size):] = False
    allowed[[i for i in tokenizer.all_special_ids if i < rows]] = False
    return allowed.to(device)


def nearest_tokens(vectors: torch.Tensor, table: torch.Tensor, allowed: torch.Tensor,
                   chunk: int = 256) -> torch.Tensor:
    """The allowed token of highest cosine similarity to each vector [P, d] -> [P]."""
    unit = F.normalize(table.float(), dim=-1)
    out = []
    with torch.no_grad():
        for at in range(0, len(vectors), chunk):
            cos = F.normalize(vectors[at:at + chunk].float(), dim=-1) @ unit.T
            out.append(cos.masked_fill(~allowed, -torch.inf).argmax(1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long, device=vectors.device)


def texts_of(tokenizer, rows: list[list[int]]) -> tuple[list[str], list[bool]]:
    """Each row's token ids as text, and whether the text encodes back to those ids (a learner reads the text, so a
    row that does not round-trip trains it on other tokens than the projected ones)."""
    texts = [tokenizer.decode(row, clean_up_tokenization_spaces=False) for row in rows]
    return texts, [tokenizer(t, add_special_tokens=False)["input_ids"] == row for t, row in zip(texts, rows)]


def projection_gap(vectors: torch.Tensor, table: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """The regulariser: the mean over vectors of ||e - emb(z)||^2 / ||emb(z)||^2, z the token each projects to
    (cosine-nearest, allowed only); 0 exactly at token embeddings. Differentiable in ``vectors``."""
    if len(vectors) == 0:
        return vectors.new_zeros(())
    target = table[nearest_tokens(vectors, table, allowed)]
    return (((vectors - target) ** 2).sum(-1) / (target**2).sum(-1).clamp_min(1e-12)).mean()


def train_expert(lm: ResponseLM, tokenizer, prompts: list[str], responses: list[str], cfg: PromptMTTConfig,
                 max_length: int, i: int, path: Path, device: str = "cpu", progress: bool = False) -> None:
    """Expert i: plain SGD epochs of the matched parameters on a seeded subsample of the rows, the parameters
    saved after each epoch (0: the pretrained ones), written at the end."""
    rng = np.random.default_rng(EXPERT_SEED + i)
    rows = np.sort(rng.choice(len(prompts), size=min(cfg.expert_pool, len(prompts)), replace=False))
    batch = {k: v.to(device) for k, v in lm_batch(tokenizer, [prompts[r] for r in rows],
                                                    [responses[r] for r in rows], max_length).items()}
    embeds = lm.table[batch["input_ids"]]
    lower = None
    if lm.first:  # the frozen lower blocks' output on every pool row, once (right padding: rows stand alone)
        with torch.no_grad():
            lower = torch.cat([lm.lower(embeds[at:at + 32], batch["attention_mask"][at:at + 32])
                               for at in range(0, len(rows), 32)])
    params = lm.pretrained()
    snapshots = {f"0/{k}": v.cpu().clone() for k, v in params.items()}
    lr = torch.tensor(cfg.expert_lr, device=device)
    for epoch in progress_bar(range(1, cfg.expert_epochs + 1), desc=f"expert {i + 1}/{cfg.experts}", unit="epoch",
                              leave=False, disable=not progress):
        order = torch.from_numpy(rng.permutation(len(rows))).to(device)
        for at in range(0, len(rows), cfg.expert_batch):
            part = order[at:at + cfg.expert_batch]
            mask = batch["attention_mask"][part]
            width = int(mask.sum(1).max())  # right padding: the columns past the longest row read nothing
            params = expert_step(lm, params, embeds[part, :width], mask[:, :width], batch["labels"][part, :width],
                                 None if lower is None else lower[part, :width], lr)
        snapshots.update({f"{epoch}/{k}": v.detach().cpu().clone() for k, v in params.items()})
    atomic_write(path, lambda p: save_file({k: v.contiguous() for k, v in snapshots.items()}, str(p)))


def expert_step(lm: ResponseLM, params: dict[str, torch.Tensor], embeds: torch.Tensor, mask: torch.Tensor,
                labels: torch.Tensor, lower: torch.Tensor | None, lr: torch.Tensor) -> dict[str, torch.Tensor]:
    """One plain SGD step of an expert on a batch."""
    params = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    loss = lm.losses(params, embeds, mask, labels, lower).mean()
    grads = torch.autograd.grad(loss, list(params.values()))
    return {k: (v - lr * g).detach() for (k, v), g in zip(params.items(), grads)}


def buffer(task: Task, lm: ResponseLM, tokenizer, cfg: PromptMTTConfig, max_length: int, device: str = "cpu",
           progress: bool = True) -> list[Path]:
    """The expert trajectories' files, trained where missing (shared by runs that agree on what makes them)."""
    prompts, responses, _ = task.columns("train")
    key = key_of("prompt-mtt experts", task.fingerprint, cfg.lm, model_revision(cfg.lm), lm.names, max_length,
                 cfg.expert_pool, cfg.expert_epochs, cfg.expert_lr, cfg.expert_batch)
    root = Path(cfg.buffer_dir) if cfg.buffer_dir else cache_dir() / "trajectories"
    folder = root / f"{task.name}-prompt-mtt-{Path(cfg.lm).name}-{key}"
    paths = [folder / f"expert-{i}.safetensors" for i in range(cfg.experts)]
    for i, path in enumerate(progress_bar(paths, desc="prompt-mtt experts", leave=False, disable=not progress)):
        with build_lock(path):  # parallel runs share experts instead of training them twice
            if not path.exists():
                train_expert(lm, tokenizer, list(prompts), list(responses), cfg, max_length, i, path, device,
                             progress)
    return paths


@register_method
class PromptMTT(Distiller):
    name = "prompt-mtt"
    description = ("instruction embeddings of a causal LM learned by trajectory matching, written as their nearest "
                   "tokens")
    Config = PromptMTTConfig
    uses_device = True
    default_learner = "smollm2-135m-lm"
    task_kinds = ("choice",)  # instruction data: (instruction, response) rows labelled by the answer's position

    def run(self, task: Task, dpc: int, learner: Learner, seed: int = 0) -> DistilledDataset:
        cfg = self.config
        prompts, responses, labels = task.columns("train")
        if responses is None:
            raise ConfigError(f"prompt-mtt: task {task.name!r} has no responses (text_pair) in its training split")
        per_class = class_indices(labels, task.spec.classes, dpc)
        rng = np.random.default_rng(seed)
        torch.manual_seed(seed)  # for the whole run: Distiller.distill gives the caller its random state back
        gen = torch.Generator().manual_seed(seed)
        max_length = cfg.max_length or task.spec.max_length
        model, tokenizer = load_causal_lm(cfg.lm, self.device)
        lm = ResponseLM(model, cfg.matched_layers)
        table, allowed = lm.table, projectable(tokenizer, lm.table.shape[0], self.device)

        picked = np.concatenate([rng.choice(rows, size=dpc, replace=False) for rows in per_class])
        batch = {k: v.to(self.device) for k, v in lm_batch(tokenizer, [prompts[i] for i in picked],
                                                             [responses[i] for i in picked], max_length).items()}
        ids, mask, targets = batch["input_ids"], batch["attention_mask"], batch["labels"]
        columns = torch.arange(ids.shape[1], device=self.device)
        learned = mask.bool() & (targets == -100) & (columns > 0)  # the instruction: after the start token
        where = learned.nonzero(as_tuple=True)
        start_ids = ids[where]
        fixed = table[ids]
        prompt = table[start_ids].clone().requires_grad_(True)

        def embeds_of(vectors: torch.Tensor) -> torch.Tensor:
            return fixed.index_put(where, vectors)

        lm.check_split(fixed[:2], mask[:2], targets[:2], cfg.lm)
        with in_use("trajectories"):  # a `cache clear` meanwhile keeps the experts this run trains and reads
            paths = buffer(task, lm, tokenizer, cfg, max_length, self.device)
            trajectories = [load_file(str(p), device=self.device) for p in paths]

        init_lr = cfg.init_lr or cfg.expert_lr
        log_lr = torch.tensor(math.log(init_lr), device=self.device, requires_grad=True)
        opt = torch.optim.Adam([{"params": [prompt], "lr": cfg.lr_embeddings},
                                {"params": [log_lr], "lr": cfg.lr_lr}])
        before = self.matching(lm, trajectories, embeds_of(prompt.detach()), mask, targets, torch.tensor(init_lr))
        history, match_history, reg_history = [], [], []
        bar = progress_bar(range(cfg.iterations), desc=f"prompt-mtt {task.name} {dpc}/class", leave=False)
        for it in bar:
            trajectory = trajectories[int(rng.integers(len(trajectories)))]
            epoch = int(rng.integers(cfg.max_start_epoch + 1))
            start = epoch_params(trajectory, epoch)
            target = epoch_params(trajectory, epoch + cfg.match_epochs)
            student = unroll(lm, start, embeds_of(prompt), mask, targets, log_lr.exp(), cfg.syn_steps,
                             cfg.syn_batch, gen)
            match = matching_loss(student, start, target)
            reg = projection_gap(prompt, table, allowed)
            descend(self.name, opt, match + cfg.reg_weight * reg, it, history)
            match_history.append(match.item())
            reg_history.append(reg.item())
            bar.set_postfix(match=f"{match_history[-1]:.4f}", reg=f"{reg_history[-1]:.4f}",
                            lr=f"{float(log_lr.detach().exp()):.4g}")

        lr = float(log_lr.detach().exp())
        final = nearest_tokens(prompt.detach(), table, allowed)
        learned_loss = self.matching(lm, trajectories, embeds_of(prompt.detach()), mask, targets, torch.tensor(lr))
        projected_loss = self.matching(lm, trajectories, embeds_of(table[final]), mask, targets, torch.tensor(lr))
        texts, round_trip = texts_of(tokenizer, [final[where[0] == r].tolist() for r in range(len(ids))])
        log = {"loss": thin(history), "matching_loss": thin(match_history), "regulariser": thin(reg_history),
               "learned_lr": lr,
               "tokens_changed": round(float((final != start_ids).float().mean()), 4) if len(final) else 0.0,
               "texts_round_trip": round(float(np.mean(round_trip)), 4),
               "initial_matching_loss": round(before, 4), "learned_matching_loss": round(learned_loss, 4),
               "projected_matching_loss": round(projected_loss, 4),
               "matched": {"layers": cfg.matched_layers,
                           "parameters": sum(v.numel() for v in epoch_params(trajectories[0], 0).values())},
               "buffer": str(paths[0].parent)}
        if isinstance(learner, CausalLMLearner) and learner.model == cfg.lm:
            made_with = {**learner.describe(), "max_length": max_length}  # the rows as this run cut them
        else:
            made_with = {"id": cfg.lm, "model": cfg.lm, "max_length": max_length, "input_kind": "text"}
        return self._artifact(task, seed, kind="text", texts=texts, text_pairs=[responses[i] for i in picked],
                              labels=torch.tensor([labels[i] for i in picked]), source_indices=picked.tolist(),
                              log=log, made_with=made_with)

    def matching(self, lm: ResponseLM, trajectories: list[dict[str, torch.Tensor]], embeds: torch.Tensor,
                 mask: torch.Tensor, labels: torch.Tensor, lr: torch.Tensor) -> float:
        """The mean matching loss of fixed embeddings over every expert and start epoch (full batches, no outer
        gradient): how well these rows, as they are, reproduce the experts."""
        cfg = self.config
        out = []
        for trajectory in trajectories:
            for epoch in range(cfg.max_start_epoch + 1):
                start = epoch_params(trajectory, epoch)
                student = unroll(lm, start, embeds.detach(), mask, labels, lr.to(embeds.device), cfg.syn_steps, 0,
                                 None, differentiable=False)
                out.append(float(matching_loss({k: v.detach() for k, v in student.items()}, start,
                                               epoch_params(trajectory, epoch + cfg.match_epochs))))
        return float(np.mean(out))
