"""The learnable synthetic set shared by bptt, dc, dm and mtt: inputs in a learner's own space and labels.

Two spaces: token embeddings [n, length, dim] for learners that read tokens (minilm, HF encoders, the GloVe
models; the set is bound to that learner), and sentence vectors [n, dim] for learners on frozen features
(minilm-frozen).

A token set can also be learned as text (``text_space``): every forward the methods run reads real token
embeddings, so the set is written as the tokens' text (kind ``text``) and any learner trains on it.

- ``project`` (Wen et al. 2023, "Hard Prompts Made Easy"): the parameter stays the continuous embeddings; the
  forward reads each position's nearest token embedding (cosine, as ``decode`` picks it), and the gradient passes
  straight through to the continuous copy.
- ``softmax`` and ``gumbel`` (VocabDistill, Sahni & Patel 2023): the parameter is logits over the vocabulary per
  position; the forward reads softmax(logits / tau) @ E, or a straight-through Gumbel-softmax sample (exactly one
  token) @ E, tau annealed geometrically from ``tau_start`` to ``tau_end``; the text holds the argmax tokens.

The vocabulary a text set may hold is, by default, the tokens of the task's training split (``vocabulary:
task``): what a real set can hold, a few thousand tokens where GloVe has 400,002 (logits [n, length, 400002]
do not fit in memory for most budgets), and tokens the learner's tokenizer gives back when their text is
encoded again. Positions the learner's encoding frames a text with ([CLS], [SEP]) and the padding stay at their
tokens, so the text, encoded again, gives the tokens that were optimised (exactly for the GloVe learners;
word pieces may merge differently in a transformer's tokenizer).
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..data import Task
from ..errors import ConfigError
from ..learners import FeatureLearner, Learner, TokenLearner
from ..distilled import DistilledDataset
from ..decode import texts_of_tokens
from .base import MethodConfig, class_indices

LABELS = ("hard", "soft", "unrestricted")
TEXT_SPACES = ("embeddings", "project", "softmax", "gumbel")
VOCABULARIES = ("task", "full")
# recorded in a config only when a text space is used: sets (and bench cells) of the embeddings space keep their keys
TEXT_OPTIONS = ("text_space", "vocabulary", "logit_lr", "logit_margin", "tau_start", "tau_end")


def check_labels_and_init(labels: str, init: str) -> None:
    """Config-time checks of the two options every learned-set method shares."""
    if labels not in LABELS:
        raise ConfigError(f"labels must be one of {', '.join(LABELS)}, not {labels!r}")
    if init not in ("real", "noise"):
        raise ConfigError(f"init must be real or noise, not {init!r}")


@dataclass
class LearnedSetConfig(MethodConfig):
    """The options of every method that learns a SyntheticSet."""

    labels: str = field(default="hard", metadata={"help": "hard, soft (learned distribution) or unrestricted"})
    init: str = field(default="real", metadata={"help": "real (random real examples) or noise"})
    length: int = field(default=32, metadata={"ge": 1, "help": "tokens per synthetic sentence (token learners)"})
    text_space: str = field(default="embeddings", metadata={
        "help": "token learners: embeddings (continuous token embeddings, a set bound to the learner), project "
                "(embeddings read as their nearest tokens in every forward, straight-through gradient; Wen et al. "
                "2023), softmax or gumbel (logits over the vocabulary per position, read as softmax(logits/tau) @ E "
                "or a straight-through Gumbel-softmax sample @ E; VocabDistill); project, softmax and gumbel write "
                "a text set of the tokens, which every learner trains on"})
    vocabulary: str = field(default="task", metadata={
        "help": "the tokens a text space may use: task (those of the training split, as a real set; the default, "
                "since logits over GloVe's 400k words take n x length x 400k floats) or full (the learner's "
                "vocabulary less its special tokens; needed with dp_epsilon)"})
    logit_lr: float = field(default=0.1, metadata={"gt": 0, "help": "Adam learning rate of the logits (softmax, gumbel)"})
    logit_margin: float = field(default=3.0, metadata={
        "help": "softmax, gumbel with init real: each real token starts ln(vocabulary) + this above the other "
                "logits (about 1/(1 + e^-margin) of the mass at tau 1)"})
    tau_start: float = field(default=1.0, metadata={"gt": 0, "help": "softmax, gumbel: temperature at the first step"})
    tau_end: float = field(default=0.1, metadata={"gt": 0, "help": "softmax, gumbel: temperature at the last step "
                                                                      "(annealed geometrically)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_labels_and_init(self.labels, self.init)
        if self.text_space not in TEXT_SPACES:
            raise ConfigError(f"text_space must be one of {', '.join(TEXT_SPACES)}, not {self.text_space!r}")
        if self.vocabulary not in VOCABULARIES:
            raise ConfigError(f"vocabulary must be task or full, not {self.vocabulary!r}")
        if getattr(self, "dp_epsilon", 0) and self.text_space != "embeddings" and self.vocabulary == "task":
            raise ConfigError("a differentially private text space cannot use the training split's tokens "
                              "(vocabulary task reads the private data): use --vocabulary full")

    def to_dict(self) -> dict:
        out = super().to_dict()
        if self.text_space == "embeddings":
            for name in TEXT_OPTIONS:
                out.pop(name)
        return out


class SyntheticSet:
    """Inputs initialised from random real examples of each class (or noise), with hard or learnable labels.

    A ``private`` set (a differentially private run) reads no training row: it starts from noise scaled by a
    public statistic of the learner's space and records no source rows, so only the mechanism touches the data.

    ``x`` is the learned input parameter: the embeddings or sentence vectors themselves, the continuous embeddings
    a ``project`` set reads as tokens, or the logits over the allowed tokens [n, length, K] of ``softmax`` and
    ``gumbel``; ``inputs`` is what the learner reads, in every space.
    """

    def __init__(self, task: Task, dpc: int, learner: Learner, rng: np.random.Generator, *, labels: str = "hard",
                 init: str = "real", length: int = 32, device: str = "cpu", private: bool = False,
                 text_space: str = "embeddings", vocabulary: str = "task", logit_lr: float = 0.1,
                 logit_margin: float = 3.0, tau: tuple[float, float] = (1.0, 0.1)) -> None:
        check_labels_and_init(labels, init)
        if not isinstance(learner, (TokenLearner, FeatureLearner)):
            raise ConfigError(f"learner {learner.name!r} has no learnable input space: learned sets need token "
                              "embeddings (minilm, an HF model, textcnn-glove) or sentence vectors (minilm-frozen)")
        if text_space not in TEXT_SPACES or vocabulary not in VOCABULARIES:
            raise ConfigError(f"text_space must be one of {', '.join(TEXT_SPACES)} and vocabulary task or full, not "
                              f"{text_space!r} and {vocabulary!r}")
        if text_space != "embeddings" and not isinstance(learner, TokenLearner):
            raise ConfigError(f"text_space {text_space} learns tokens: it needs a learner that reads them "
                              f"(textcnn-glove, minilm, an HF model), not {learner.name!r}")
        if private and init != "noise":
            raise ConfigError("a differentially private set starts from noise (init noise): init real copies "
                              "private examples")
        if private and text_space != "embeddings" and vocabulary == "task":
            raise ConfigError("a differentially private text space cannot use the training split's tokens "
                              "(vocabulary task reads the private data): use vocabulary full")
        self.learner, self.label_kind, self.classes = learner, labels, task.num_classes
        self.text_space, self.logit_lr, self.tau_range, self.tau = text_space, logit_lr, tau, tau[0]
        if private:
            if dpc < 1:
                raise ConfigError(f"examples per class must be >= 1, got {dpc}")
            hard, picked, ids = torch.arange(task.num_classes).repeat_interleave(dpc), None, None
            x, self.fixed = public_noise(task, len(hard), learner, rng, length)
        else:
            x, self.fixed, hard, picked, ids = start_from_rows(task, dpc, learner, rng, init, length,
                                                               framed=text_space != "embeddings")
        self.source_indices = picked
        self.hard = hard.to(device)
        self.key = "features" if isinstance(learner, FeatureLearner) else "inputs_embeds"
        if text_space != "embeddings":
            x = self._start_text(task, x, ids, vocabulary, logit_margin, device)
        self.x = x.to(device).requires_grad_(True)
        self.fixed = {k: v.to(device) for k, v in self.fixed.items()}
        # soft: a learned distribution (logits start confident in the real class); unrestricted: a learned vector
        start = F.one_hot(self.hard, self.classes).float() * (3.0 if labels == "soft" else 1.0)
        self.label_param = start.requires_grad_(labels != "hard")

    def _start_text(self, task: Task, x: torch.Tensor, ids: torch.Tensor | None, vocabulary: str, margin: float,
                    device: str) -> torch.Tensor:
        """Sets up the text space (its allowed tokens, the pinned positions and their embeddings) and returns its
        starting parameter, from the starting embeddings ``x`` and their token ids (None: noise)."""
        learner, noise = self.learner, ids is None
        self.tokens, table = learner.vocabulary()
        table = table.float()
        n, length = x.shape[:2]
        if noise:  # every row laid out as a text that fills the set's length
            frame, mask = text_frame(learner, length)
            ids = frame.expand(n, -1).clone()
            self.fixed = {"attention_mask": mask.expand(n, -1).clone()}
        # pinned: the padding, and the special tokens the learner frames a text with (encoding puts them back)
        framing = framing_ids(learner, self.tokens, task.spec.pair)
        pinned = ~self.fixed["attention_mask"].bool() | torch.isin(ids, framing)
        candidates = allowed_tokens(task, learner, self.tokens, vocabulary)
        self.candidates, self.table = candidates.to(device), table[candidates].to(device)
        self.start_ids, self.pinned, self.base = ids.to(device), pinned.to(device), table[ids].to(device)
        self._nearest: tuple[int, torch.Tensor] | None = None
        if self.text_space == "project":
            self.unit = F.normalize(self.table, dim=-1)
            return x
        k = len(candidates)
        if noise:
            return torch.randn(n, length, k)
        # each real token a margin above the rest; a token a text cannot hold ([UNK]) gives way to its nearest
        # allowed one (cosine), as project reads it
        column = torch.full((len(table),), -1, dtype=torch.long)
        column[candidates] = torch.arange(k)
        col = column[ids]
        lost = (col < 0) & ~pinned
        if lost.any():
            unit = F.normalize(table[candidates], dim=-1)
            col[lost] = (F.normalize(table[ids[lost]], dim=-1) @ unit.T).argmax(-1)
        free = ~pinned
        logits = torch.zeros(n, length, k)
        logits[free, col[free]] = math.log(k) + margin
        return logits

    @classmethod
    def seeded(cls, task: Task, dpc: int, learner: Learner, cfg: LearnedSetConfig, seed: int,
               labels: str | None = None, device: str = "cpu") -> tuple["SyntheticSet", np.random.Generator]:
        """The set a method starts from, with torch seeded and the generator the method goes on drawing from
        (a config with ``dp_epsilon`` makes a private set). torch stays seeded for the rest of the method's run;
        ``Distiller.distill`` gives the caller its own random state back afterwards."""
        rng = np.random.default_rng(seed)
        torch.manual_seed(seed)
        syn = cls(task, dpc, learner, rng, labels=labels or cfg.labels, init=cfg.init, length=cfg.length,
                  device=device, private=bool(getattr(cfg, "dp_epsilon", 0)), text_space=cfg.text_space,
                  vocabulary=cfg.vocabulary, logit_lr=cfg.logit_lr, logit_margin=cfg.logit_margin,
                  tau=(cfg.tau_start, cfg.tau_end))
        return syn, rng

    def inputs(self, rows: torch.Tensor | None = None, detach: bool = False) -> dict[str, torch.Tensor]:
        """What the learner reads (of ``rows``, or all): in a text space, token embeddings, with the gradient to
        ``x`` (straight through, for project and gumbel) unless ``detach``."""
        with torch.no_grad() if detach else nullcontext():
            x = self.read(rows)
        fixed = self.fixed if rows is None else {k: v[rows] for k, v in self.fixed.items()}
        return {self.key: x.detach() if detach else x, **fixed}

    def read(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        def pick(t: torch.Tensor) -> torch.Tensor:
            return t if rows is None else t[rows]

        if self.text_space == "embeddings":
            return pick(self.x)
        x = pick(self.x)
        if self.text_space == "project":
            # the nearest tokens' embeddings plus a zero with x's gradient: the values are exactly the tokens'
            read = self.table[pick(self.nearest())] + (x - x.detach())
        elif self.text_space == "softmax":
            read = (x / self.tau).softmax(-1) @ self.table
        else:
            read = gumbel_one_hot(x, self.tau) @ self.table
        return torch.where(pick(self.pinned).unsqueeze(-1), pick(self.base), read)

    def nearest(self) -> torch.Tensor:
        """Each position's nearest allowed token by cosine (an index into ``candidates``) for ``project``, computed
        once per change of ``x`` (an optimiser step bumps its version)."""
        if self._nearest is None or self._nearest[0] != self.x._version:
            with torch.no_grad():  # one example at a time: [length, K] scores, even for GloVe's 400k words
                ids = torch.stack([(F.normalize(row, dim=-1) @ self.unit.T).argmax(-1) for row in self.x])
            self._nearest = (self.x._version, ids)
        return self._nearest[1]

    def token_ids(self) -> torch.Tensor:
        """The vocabulary id at every position of the text the set holds now [n, length]: the pinned tokens, and
        elsewhere the nearest allowed token (project) or the logits' argmax (softmax, gumbel)."""
        col = self.nearest() if self.text_space == "project" else self.x.detach().argmax(-1)
        return torch.where(self.pinned, self.start_ids, self.candidates[col])

    def held_inputs(self) -> dict[str, torch.Tensor]:
        """The inputs of the set as its artifact holds it, without gradient: in a text space, its tokens'
        embeddings (what any later forward on its text reads)."""
        if self.text_space == "embeddings":
            return self.inputs(detach=True)
        col = self.nearest() if self.text_space == "project" else self.x.detach().argmax(-1)
        x = torch.where(self.pinned.unsqueeze(-1), self.base, self.table[col])
        return {self.key: x, **self.fixed}

    def anneal(self, step: int, steps: int) -> None:
        """The temperature at ``step`` of ``steps``: geometric from tau_start to tau_end (softmax, gumbel)."""
        start, end = self.tau_range
        self.tau = start * (end / start) ** (step / max(1, steps - 1))

    def labels(self, detach: bool = False) -> torch.Tensor:
        if self.label_kind == "hard":
            return self.hard
        y = self.label_param.softmax(-1) if self.label_kind == "soft" else self.label_param
        return y.detach() if detach else y

    def parameters(self) -> list[torch.Tensor]:
        return [self.x] + ([self.label_param] if self.label_kind != "hard" else [])

    def param_groups(self, lr: float) -> list[dict]:
        """Optimiser groups: the inputs and learned labels at ``lr``, logits over tokens at their own rate (a step
        of a few hundredths hardly moves logits that start ln(vocabulary) apart)."""
        logits = self.text_space in ("softmax", "gumbel")
        groups = [{"params": [self.x], "lr": self.logit_lr if logits else lr}]
        return groups + ([{"params": [self.label_param], "lr": lr}] if self.label_kind != "hard" else [])

    def rows_of(self, c: int) -> torch.Tensor:
        return torch.nonzero(self.hard == c).flatten()

    def artifact(self, distiller, task: Task, seed: int, labels: torch.Tensor | None = None, **kw) -> DistilledDataset:
        """The set as a DistilledDataset (``labels`` overrides the set's own): bound to its learner, or in a text
        space its tokens' text (kind ``text``), which every learner trains on with its own default recipe; a
        recipe and step sizes learned for the learner (``recipe``, ``lrs``) then stay in the log."""
        labels = self.labels(detach=True) if labels is None else labels
        if self.text_space == "embeddings":
            kind = "features" if self.key == "features" else "token-embeddings"
            tensors = {k: v.detach().cpu() for k, v in self.inputs().items()}
            return distiller._artifact(task, seed, kind=kind, labels=labels.cpu(), tensors=tensors,
                                       bound_to=self.learner.describe(), source_indices=self.source_indices, **kw)
        lrs, recipe, log = kw.pop("lrs", None), kw.pop("recipe", None), dict(kw.pop("log", {}))
        if recipe is not None:
            log["learned_recipe"] = recipe
        if lrs is not None:
            log["learned_lrs"] = [round(float(v), 6) for v in lrs]
        mask = self.fixed["attention_mask"].bool().cpu()
        rows = [[self.tokens[i] for i in r[m].tolist()] for r, m in zip(self.token_ids().cpu(), mask)]
        types = self.fixed.get("token_type_ids")
        kinds = None if types is None else [t[m].tolist() for t, m in zip(types.cpu(), mask)]
        pair = task.spec.pair or (types is not None and bool((types == 1).any()))
        texts, pairs = texts_of_tokens(self.learner, rows, kinds, pair)
        return distiller._artifact(task, seed, kind="text", labels=labels.cpu(), texts=texts, text_pairs=pairs,
                                   source_indices=self.source_indices, log=log, **kw)


def gumbel_one_hot(logits: torch.Tensor, tau: float) -> torch.Tensor:
    """A hard Gumbel-softmax sample: exactly one-hot in the forward (one token per position, drawn from
    softmax(logits)), with the gradient of the relaxed sample softmax((logits + g) / tau). The one-hot plus a
    zero (soft - soft.detach()) keeps the values exact, which torch's hard - soft.detach() + soft does not."""
    tiny = torch.finfo(logits.dtype).tiny
    g = -torch.empty_like(logits).exponential_().clamp_min(tiny).log()
    soft = ((logits + g) / tau).softmax(-1)
    hard = F.one_hot(soft.argmax(-1), logits.shape[-1]).to(soft.dtype)
    return hard + (soft - soft.detach())


def framing_ids(learner: TokenLearner, tokens: list[str], pair: bool) -> torch.Tensor:
    """The special tokens the learner's encoding frames a text (or a pair) with ([CLS], [SEP]; none for GloVe):
    the detokenizer drops them and encoding puts them back. ``tokens``: the learner's vocabulary."""
    ids = learner.encode(["the"], ["the"] if pair else None)["input_ids"][0].unique().tolist()
    return torch.tensor([i for i in ids if not learner.detokenize([tokens[i]])], dtype=torch.long)


def text_frame(learner: TokenLearner, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask [length] of a text that fills ``length`` positions (a word repeated), as the
    learner encodes it: the layout of a noise set in a text space, its framing tokens where encoding puts them."""
    enc = learner.with_max_length(min(length, learner.max_length)).encode([" ".join(["the"] * length)])
    pad = length - enc["input_ids"].shape[1]
    return F.pad(enc["input_ids"][0], (0, pad)), F.pad(enc["attention_mask"][0], (0, pad))


def allowed_tokens(task: Task, learner: TokenLearner, tokens: list[str], vocabulary: str) -> torch.Tensor:
    """The vocabulary ids (of ``tokens``, the learner's vocabulary) a text space may put at a free position:
    those of the training split's encoding (``task``) or the whole vocabulary (``full``), less the special tokens
    the detokenizer drops ([PAD], [UNK], [CLS], ...): a text cannot hold them."""
    if vocabulary == "task":
        texts, pairs, _ = task.columns("train")
        enc = learner.encode(texts, pairs)
        ids = enc["input_ids"][enc["attention_mask"].bool()].unique().tolist()
    else:
        ids = range(len(tokens))
    return torch.tensor([i for i in ids if learner.detokenize([tokens[i]])], dtype=torch.long)


def start_from_rows(task: Task, dpc: int, learner: Learner, rng: np.random.Generator, init: str, length: int,
                    framed: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor, list[int],
                                                   torch.Tensor | None]:
    """Inputs from ``dpc`` random training rows per class (their embeddings, or noise at their spread), the fixed
    tensors beside them, their labels, the rows picked and their token ids (None for noise and sentence vectors).
    ``framed`` (a text space): the rows are encoded at the set's length, so that a cut text keeps the tokens the
    learner frames it with ([SEP] last)."""
    texts, pairs, y = task.columns("train")
    per_class = class_indices(y, task.spec.classes, dpc)
    picked = np.concatenate([rng.choice(idx, size=dpc, replace=False) for idx in per_class])
    hard = torch.tensor([y[i] for i in picked])
    encoder = learner.with_max_length(min(length, learner.max_length)) if framed else learner
    enc = encoder.encode([texts[i] for i in picked], None if pairs is None else [pairs[i] for i in picked])
    ids = None
    if isinstance(learner, FeatureLearner):
        x, fixed = enc["features"].float(), {}
    else:
        fit = {k: F.pad(v, (0, max(0, length - v.shape[1])))[:, :length] for k, v in enc.items()}
        model = learner.build(task.num_classes, seed=0)
        with torch.no_grad():
            x = learner.input_embeddings(model, dict(model.named_parameters()), fit["input_ids"]).float()
        # fixed, not learned: which positions count and, for pairs, which sentence each position belongs to
        # (single texts: all zeros, the model's default, so not stored)
        keep = ("attention_mask", "token_type_ids") if pairs is not None else ("attention_mask",)
        fixed = {k: fit[k] for k in keep if k in fit}
        ids = fit["input_ids"]
    if init == "noise":
        gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
        rows = x[fixed["attention_mask"].bool()] if fixed else x
        x = torch.randn(x.shape, generator=gen) * rows.std()
        # noise has no sentence boundary to keep: every position counts, all as the first sentence
        fixed = {"attention_mask": torch.ones_like(fixed["attention_mask"])} if fixed else {}
        ids = None
    return x, fixed, hard, picked.tolist(), ids


def public_noise(task: Task, n: int, learner: Learner, rng: np.random.Generator,
                 length: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``n`` noise inputs in the learner's space, scaled by public statistics only: the spread of its token
    embedding table, or of the sentence vectors of the class names. The noise is seeded: it reads no private
    data, so replaying it from the set's seed reveals nothing."""
    gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
    if isinstance(learner, FeatureLearner):
        public = torch.as_tensor(learner.sentence_vectors(list(task.spec.classes), cache=False)).float()
        return torch.randn(n, public.shape[-1], generator=gen) * public.std(), {}
    table = learner.vocabulary()[1].float()
    x = torch.randn(n, length, table.shape[-1], generator=gen) * table.std()
    return x, {"attention_mask": torch.ones(n, length, dtype=torch.long)}  # every position counts


def real_inputs(task: Task, learner: Learner) -> tuple[dict[str, torch.Tensor], torch.Tensor, list[np.ndarray]]:
    """The training split encoded for ``learner``, its labels, and the row indices of each class."""
    texts, pairs, labels = task.columns("train")
    y = torch.tensor(labels)
    return learner.encode(texts, pairs), y, [np.flatnonzero(np.asarray(labels) == c) for c in range(task.num_classes)]


def fresh_parameters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's tensors for ``functional_call``: trainable ones as new leaves that require grad."""
    out = {**dict(model.named_buffers()), **{k: v.detach() for k, v in model.named_parameters()}}
    out.update({k: v.detach().clone().requires_grad_(True) for k, v in model.named_parameters() if v.requires_grad})
    return out
