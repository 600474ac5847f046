"""condense (after CondenseLM, Shen et al., EMNLP 2025): an instruction-following LM condenses subsets of real
examples into fewer new ones, and two reward models pick what joins the set.

``select: reward`` (the default) is the paper's reward matching (its Algorithm 1). A representativeness reward model
M_rep is trained once on the training split and scores R_rep(x, y) = M_rep(x)_y; a coverage model M_cov, retrained
every iteration on the examples condensed so far, gives R_cov(x, y) = R_rep(x, y) - M_cov(x)_y (high where M_rep is
sure and the set does not yet teach it). Each iteration retrieves K real examples (``subset_size``) by greedy
farthest-point (K-center) selection in the learner's sentence space among those with R_rep >= ``rep_threshold`` and
R_cov >= ``cov_threshold``, mixing the classes that still need examples; the LM is shown them with their labels
(``prompts/condense-ldsc.txt``, the paper's LDSC prompt in our words) and asked ``candidates`` times for K' =
``condensed_size`` new labelled examples; each answer is parsed into a subset and scored by the sum over its
examples of R_rep + ``coverage_weight`` * R_cov, and the best subset joins the set (best-of-N over subsets). This
repeats until every class has ``dpc`` examples; what an answer writes for a class that is full is dropped.

Where this differs from the paper, and why:
- M_rep is the cached teacher (``teacher.teacher_logits``): the ``reward_model`` learner (default ``minilm-frozen``,
  a linear probe on frozen MiniLM vectors) trained on the full split with its full-data recipe, shared with
  ``--soft-labels teacher``. The paper trains BERT-base with dropout 0.3 and stops after one epoch, so that the
  model learns the common patterns only; the teacher has no dropout or early-stopping hook, and a probe on frozen
  vectors is limited by its capacity instead (on MR it fits its training split at 80%, its test split at 75%, and
  41% of the training examples reach the paper's R_rep threshold of 0.8). A fine-tuned ``reward_model``
  (``minilm``) trains to convergence and is less regularised than the paper's.
- M_cov is a logistic-regression probe on the learner's sentence vectors (``COVERAGE_C``: weakly regularised, so
  that it fits its few examples as the paper's BERT trained 200 steps on them does), not BERT-base. Before any
  example is condensed it is uniform (R_cov = R_rep - 1/C); while one class only has examples it predicts that
  class; a class with none gets probability 0.
- Retrieval gives each class that still needs examples an equal share of K (so every subset mixes classes); the
  examples retrieved before count as centres and are not retrieved again (a class whose examples are all used
  starts over); a class with too few examples above the thresholds is topped up with its best-rewarded ones below
  them (counted as ``relaxed``). The paper does not say how K-center starts or whether classes are balanced.
- The paper's LDSC has the LM name the discriminative and the shared features and then write; one prompt asks for
  both here (a small LM follows one instruction better), and pair tasks (the paper writes MNLI hypotheses of every
  label for shared premises) write each pair on one line as ``label: text || text``.
- Every written example passes the filter of ``generation_filter`` before it is scored: no echo of a real example of
  its prompt (``echo_overlap``), and M_rep's class for it is the label it was written for (label consistency, the
  filter ``gradmm`` can share); repeats of an example already written are dropped too. Algorithm 1 scores the
  answers as written. An answer gives at most K' examples, and none for a class that is full.
- A small writer shown real examples mostly copies them, and the filter can only drop the copies. ``no_copy`` (off by
  default, as the paper's GPT-4o needs no such help) keeps a local writer from writing any run of that many tokens
  of its prompt's real examples while it decodes (``lm.NoCopy``). The 1.5B writer then copies around the ban,
  dropping spaces or misspelling words, and its set is no better (docs/results.md, Table 10).
- When no answer of an iteration holds a usable example, the iteration keeps the K' best-rewarded real examples of
  its retrieved subset (marked ``fallback`` in the log), so that a weak LM still ends with a full set.
- Defaults are the paper's SST-2 settings (K = 20, K' = 5, thresholds 0.8 and 0.3, weight 0.2) with 8 answers (the
  paper samples 10) and the offline ``smollm2-135m`` writer (the paper: GPT-4o).

``select: gradient`` keeps the earlier rule: per class, the real examples are clustered (k-means in the learner's
sentence space, ``dpc`` clusters); the LM is shown the members nearest each centroid and asked for one new example
of the class; each candidate is scored by how well the loss gradient it gives a learner (its head, freshly
initialised and seeded) aligns with the mean gradient of the cluster's real members, and the best one stands for
the cluster (``prompts/condense-{single,pair}.txt``).

Every prompt, answer, score and choice is kept in the set's log; an answer that is empty or malformed (too short, an
echo of the instructions, a pair without both texts, a line without a label) is skipped and counted, never written,
and so is one that echoes a real example of its prompt (the same text, or ``echo_overlap`` of its words or the
example's). Answers are cached by prompt, so a killed run resumes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib.resources import files

import numpy as np
import torch
import torch.nn.functional as F

from ..data import Task
from ..data.task import text_key
from ..errors import ConfigError
from ..learners import Learner, get_learner
from ..distilled import DistilledDataset
from ..progress import bar as progress_bar, write as progress_write
from ..train import batch_of
from ..words import words
from .base import Distiller, MethodConfig, register_method
from .generation_filter import MIN_WORDS, echoes, label_consistent
from .learned_set import real_inputs

GRADIENT_CHUNK = 256  # real examples per forward of a cluster's gradient: a whole large cluster runs out of memory
# small instruct LMs often talk about the task instead of doing it ("Here's a revised version:", "The sentences
# contain negative language"); such a line is not an example of the class
META = re.compile(r"\b(condens\w*|revised|rephras\w*|label+ed|here is|here's|original (text|sentence)s?|"
                  r"(new|this|the following) (sentence|text|example)s?|"
                  r"(the|these|those|all|both) (sentence|text|example)s)\b", re.IGNORECASE)


def answer_lines(raw: str) -> list[str]:
    """The lines of an answer without list marks and quotes, less introductions ("Here it is:")."""
    lines = [line.strip().strip("-*\"' ").strip() for line in raw.splitlines()]
    return [line for line in lines if line and not line.endswith(":")]


def prompt_template(pair: bool) -> str:
    return (files(__package__) / "prompts" / f"condense-{'pair' if pair else 'single'}.txt").read_text().strip()


def show_example(text: str, pair: str | None) -> str:
    return f"- {text}" if pair is None else f"- Text 1: {text}\n  Text 2: {pair}"


def parse_generation(raw: str, label: str, pair: bool) -> tuple[str, str | None] | None:
    """The example an LM wrote (a text, or both texts of a pair), or None when the answer is unusable."""
    if pair:
        found = dict(re.findall(r"(?im)^[\W_]*text\s*([12])\s*:\s*(.*?)\s*$", raw))
        parts = [found.get(k, "").strip(" *_\"'") for k in "12"]
    else:
        parts = answer_lines(raw)[:1] or [""]
    if any(len(p.split()) < MIN_WORDS or META.search(p) for p in parts):
        return None
    return parts[0], parts[1] if pair else None


# -- select: reward ------------------------------------------------------------------------------------------------

PAIR_SEPARATOR = " || "  # between the two texts of a pair on its line of the LDSC prompt and answers
COVERAGE_C = 100.0  # inverse L2 strength of the coverage probe: weak, so that it fits the few examples it has
ENUMERATION = re.compile(r"^\s*(?:[-*\u2022]+|\(?\d+[.):])?\s*")  # "- ", "* ", "1. ", "(2) " before a line


def ldsc_template() -> str:
    return (files(__package__) / "prompts" / "condense-ldsc.txt").read_text().strip()


def shown_texts(members: list[tuple[str, str | None]]) -> tuple[str, ...]:
    """The texts of a prompt's real examples (both of a pair): what ``no_copy`` keeps the writer from copying."""
    return tuple(t for member in members for t in member if t)


def show_labelled(label: str, text: str, pair: str | None) -> str:
    return f"- {label}: {text}" if pair is None else f"- {label}: {text}{PAIR_SEPARATOR}{pair}"


def parse_labelled(raw: str, classes: tuple[str, ...] | list[str], pair: bool
                   ) -> tuple[list[tuple[int, str, str | None]], int]:
    """The labelled examples of an LDSC answer, one a line as ``label: text`` (a pair: ``label: text || text``),
    as (class id, text, second text or None), and how many of its lines are no usable example (chatter, a line
    without a known label, too short, about the task rather than of it, a pair without both texts; an empty
    answer counts as one)."""
    names = sorted(classes, key=len, reverse=True)  # "very negative" before "negative"
    labelled = re.compile(r"^[\[(]?(" + "|".join(re.escape(n) for n in names) + r")[\])]?\s*[:|\-\u2013\u2014]\s*(.*)$",
                          re.IGNORECASE)
    index = {n.casefold(): c for c, n in enumerate(classes)}
    found, skipped = [], 0
    lines = [ENUMERATION.sub("", line).strip(" *_\"'") for line in raw.splitlines()]
    lines = [line for line in lines if line]
    for line in lines:
        match = labelled.match(line)
        if match is None:
            skipped += 1
            continue
        text = match.group(2)
        # "negative: negative: ..." is a prompt line copied with its mark: its label counts once; two labels, none
        while (again := labelled.match(ENUMERATION.sub("", text).strip(" *_\"'"))) is not None:
            if again.group(1).casefold() != match.group(1).casefold():
                text = ""
                break
            text = again.group(2)
        parts = [text] if not pair else text.split(PAIR_SEPARATOR.strip())
        parts = [part.strip(" *_\"'") for part in parts]
        if len(parts) != (2 if pair else 1) or any(len(words(part)) < MIN_WORDS or META.search(part) for part in parts):
            skipped += 1
            continue
        found.append((index[match.group(1).casefold()], parts[0], parts[1] if pair else None))
    return found, skipped + (not lines)


def coverage_probabilities(seen: np.ndarray, seen_labels: np.ndarray | list[int], num_classes: int,
                           vectors: np.ndarray) -> np.ndarray:
    """M_cov(x) [n, C]: the class probabilities of a logistic-regression probe trained on the condensed examples so
    far (their sentence vectors ``seen``, their classes ``seen_labels``). Uniform before any exists; the one class
    while only one has examples; 0 for a class without any."""
    from sklearn.linear_model import LogisticRegression

    seen_labels = np.asarray(seen_labels, dtype=int)
    if not len(seen_labels):
        return np.full((len(vectors), num_classes), 1.0 / num_classes)
    out = np.zeros((len(vectors), num_classes))
    present = np.unique(seen_labels)
    if len(present) == 1:
        out[:, present[0]] = 1.0
        return out
    probe = LogisticRegression(C=COVERAGE_C, max_iter=1000).fit(seen, seen_labels)
    out[:, probe.classes_] = probe.predict_proba(vectors)
    return out


def rewards(rep_probs: np.ndarray, cov_probs: np.ndarray, labels: np.ndarray | list[int]
            ) -> tuple[np.ndarray, np.ndarray]:
    """(R_rep, R_cov) of examples of classes ``labels``: M_rep's probability of the class, and that less M_cov's."""
    rows, labels = np.arange(len(rep_probs)), np.asarray(labels, dtype=int)
    r_rep = rep_probs[rows, labels]
    return r_rep, r_rep - cov_probs[rows, labels]


def quotas(need: np.ndarray | list[int], size: int) -> dict[int, int]:
    """``size`` retrieved examples shared over the classes that still need examples: evenly, the remainder to those
    that need the most (then the first); a class left with none is left out."""
    open_classes = sorted((c for c in range(len(need)) if need[c] > 0), key=lambda c: (-need[c], c))
    if not open_classes:
        return {}
    base, extra = divmod(size, len(open_classes))
    share = {c: base + (i < extra) for i, c in enumerate(open_classes)}
    return {c: k for c, k in share.items() if k}


def retrieve(vectors: np.ndarray, labels: np.ndarray, eligible: np.ndarray, available: np.ndarray,
             score: np.ndarray, quota: dict[int, int], rng: np.random.Generator,
             centres: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """K-center retrieval of a mixed-class subset: greedy farthest-point selection in ``vectors`` among the
    ``eligible`` rows (rewards above the thresholds, among the ``available`` ones), ``quota[c]`` rows of each class
    c. Distances start from ``centres`` (rows retrieved before) when there are any, else from a seeded random row. A
    class with fewer eligible rows than its quota is topped up with its best-``score`` available rows (``relaxed``,
    the count returned). Returns the rows in the order picked, and the relaxed count."""
    pool, relaxed = [], 0
    for c, k in quota.items():
        ok = np.flatnonzero(eligible & available & (labels == c))
        if len(ok) < k:
            rest = np.flatnonzero(~eligible & available & (labels == c))
            top = rest[np.argsort(-score[rest], kind="stable")[: k - len(ok)]]
            relaxed += len(top)
            ok = np.concatenate([ok, top])
        pool.append(ok)
    pool = np.concatenate(pool) if pool else np.zeros(0, dtype=int)
    if not len(pool):
        return pool, relaxed
    left = {c: min(k, int((labels[pool] == c).sum())) for c, k in quota.items()}
    at, of = vectors[pool], labels[pool]
    if centres is not None and len(centres):
        dist = np.full(len(pool), np.inf)
        for centre in centres:  # one at a time: pool x centres x width at once can be gigabytes
            dist = np.minimum(dist, np.linalg.norm(at - vectors[centre], axis=1))
    else:
        dist = np.zeros(len(pool))
        dist[int(rng.integers(len(pool)))] = 1.0  # the seeded start: picked first
    taken, picked = np.zeros(len(pool), dtype=bool), []
    while sum(left.values()):
        open_ = ~taken & np.array([left[int(c)] > 0 for c in of])
        nxt = int(np.flatnonzero(open_)[np.argmax(dist[open_])])
        taken[nxt] = True
        picked.append(nxt)
        left[int(of[nxt])] -= 1
        dist = np.minimum(dist, np.linalg.norm(at - at[nxt], axis=1))
    return pool[picked], relaxed


@dataclass
class CondenseConfig(MethodConfig):
    llm: str = field(default="smollm2-135m", metadata={"help": "local or hub causal LM, or openai:URL/MODEL"})
    llm_timeout: float = field(default=120.0, metadata={
        "gt": 0, "help": "openai:URL/MODEL: seconds to wait for one answer before the request is retried"})
    llm_retries: int = field(default=4, metadata={
        "ge": 0, "help": "openai:URL/MODEL: retries of a failed or timed-out request (each said on stderr), with "
                         "exponential backoff from 2 s"})
    select: str = field(default="reward", metadata={
        "help": "reward (CondenseLM's reward matching: K-center subsets above reward thresholds, best-of-N answers "
                "by summed reward) or gradient (per-class clusters, the candidate whose head gradient aligns best "
                "with its cluster's)"})
    reward_model: str = field(default="minilm-frozen", metadata={
        "help": "reward: the learner whose class probabilities are the representativeness reward (trained once on "
                "the full split with its full-data recipe and cached, as a teacher)"})
    subset_size: int = field(default=20, metadata={
        "ge": 1, "help": "reward: real examples retrieved per iteration (K), shared evenly by the classes still "
                         "short of examples"})
    condensed_size: int = field(default=5, metadata={
        "ge": 1, "help": "reward: new examples asked per iteration (K/n, n >= 2: at most half of subset_size)"})
    rep_threshold: float = field(default=0.8, metadata={
        "ge": 0, "le": 1, "help": "reward: retrieve only real examples whose representativeness reward (the reward "
                                  "model's probability of their class) is at least this"})
    cov_threshold: float = field(default=0.3, metadata={
        "ge": -1, "le": 1, "help": "reward: retrieve only real examples whose coverage reward (representativeness "
                                   "less the coverage model's probability of their class) is at least this"})
    coverage_weight: float = field(default=0.2, metadata={
        "ge": 0, "help": "reward: an answer's score is the sum over its examples of representativeness + this x "
                         "coverage"})
    members: int = field(default=5, metadata={"ge": 1, "help": "gradient: real examples of a cluster shown in its "
                                                               "prompt"})
    candidates: int = field(default=8, metadata={"ge": 1, "help": "answers sampled per prompt (best-of-N)"})
    max_new_tokens: int = field(default=64, metadata={
        "ge": 4, "help": "tokens per example asked for (a reward answer of K' examples gets K' times this)"})
    kind: str = field(default="sentences", metadata={"help": "what the examples are, in the prompt (plural)"})
    echo_overlap: float = field(default=0.8, metadata={
        "gt": 0, "le": 1, "help": "drop a generation sharing this fraction of the distinct words of the shorter "
                                  "text with one of its prompt's real examples (a copy or near-copy; an exact "
                                  "copy, case and whitespace aside, always)"})
    no_copy: int = field(default=0, metadata={
        "ge": 0, "help": "local writers: forbid every run of this many tokens of the prompt's real examples while "
                         "writing, so that a small LM writes rather than copies (0: off)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.no_copy == 1:
            raise ConfigError("condense: no_copy (--no-copy) is a run of at least 2 tokens (1 would forbid every "
                              "token of the examples), or 0 for off")
        if self.no_copy and self.llm.startswith("openai:"):
            raise ConfigError(f"condense: no_copy (--no-copy) needs a local writer: the decoding of {self.llm!r} "
                              "cannot be constrained")
        if self.select not in ("reward", "gradient"):
            raise ConfigError(f"condense: select (--select) must be reward or gradient, not {self.select!r}")
        if self.select == "reward":
            get_learner(self.reward_model)  # a misspelt name fails here, not after the set's first stage
            if 2 * self.condensed_size > self.subset_size:
                raise ConfigError(f"condense: condensed_size (--condensed-size) {self.condensed_size} must be at most "
                                  f"half of subset_size (--subset-size) {self.subset_size}: each iteration condenses "
                                  "K real examples into K/n new ones, n >= 2")

    def to_dict(self) -> dict:
        out = super().to_dict()
        if not self.no_copy:  # off is what every set made before the option was: the same set, the same key
            out.pop("no_copy")
        return out


def head_gradient(learner: Learner, model: torch.nn.Module, inputs: dict[str, torch.Tensor],
                  labels: torch.Tensor) -> torch.Tensor:
    """The mean loss gradient of ``inputs`` with respect to the learner's head, flattened."""
    names = learner.head_parameter_names(model)
    params = {k: v.detach() for k, v in model.named_parameters()}
    params.update({k: params[k].clone().requires_grad_(True) for k in names})
    params.update(dict(model.named_buffers()))
    loss = F.cross_entropy(learner.forward(model, params, inputs), labels)
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, [params[k] for k in names])])


def mean_head_gradient(learner: Learner, model: torch.nn.Module, inputs: dict[str, torch.Tensor],
                       labels: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """``head_gradient`` of many rows, ``chunk`` (default ``GRADIENT_CHUNK``) rows per forward: the chunks' mean
    gradients weighted by their sizes, which is the mean gradient of all rows."""
    n, total, chunk = len(labels), None, chunk or GRADIENT_CHUNK
    for start in range(0, n, chunk):
        idx = torch.arange(start, min(start + chunk, n))
        part = head_gradient(learner, model, batch_of(inputs, idx), labels[idx]) * (len(idx) / n)
        total = part if total is None else total + part
    assert total is not None, "no rows"
    return total


@register_method
class Condense(Distiller):
    name = "condense"
    description = "an instruct LM condenses mixed-class subsets of real examples; reward models pick its answers"
    Config = CondenseConfig
    uses_device = True

    def run(self, task: Task, dpc: int, learner: Learner, seed: int = 0) -> DistilledDataset:
        from ..lm import get_lm
        from .base import class_indices

        cfg = self.config
        class_indices(task.columns("train")[2], task.spec.classes, dpc)  # every class can give dpc examples
        endpoint = {"timeout": cfg.llm_timeout, "retries": cfg.llm_retries} if cfg.llm.startswith("openai:") else {}
        lm = get_lm(cfg.llm, self.device, **endpoint)
        return (self._reward if cfg.select == "reward" else self._gradient)(task, dpc, learner, seed, lm)

    def _reward(self, task: Task, dpc: int, learner: Learner, seed: int, lm) -> DistilledDataset:
        """``select: reward``: CondenseLM's iterations of retrieval above the reward thresholds, LDSC and best-of-N
        over whole answers (the module's docstring)."""
        from ..lm import cached_generate
        from .teacher import teacher_logits

        cfg = self.config
        texts, pairs, labels = task.columns("train")
        is_pair, classes, num_classes = pairs is not None, task.spec.classes, task.num_classes
        y = np.asarray(labels, dtype=int)
        vectors = learner.sentence_vectors(texts, pairs)
        rep_real = teacher_logits(task, cfg.reward_model, texts, pairs).softmax(-1).numpy()  # M_rep, trained once
        template, kind = ldsc_template(), "text pairs" if is_pair else cfg.kind
        line = '"label: first text || second text"' if is_pair else '"label: text"'
        rng = np.random.default_rng(seed)
        need = np.full(num_classes, dpc)
        available = np.ones(len(y), dtype=bool)
        retrieved: list[int] = []
        out: list[tuple[int, str, str | None]] = []  # the set so far: (class, text, second text)
        out_vectors = np.zeros((0, vectors.shape[1]), dtype=vectors.dtype)
        log: list[dict] = []

        def coverage(at: np.ndarray) -> np.ndarray:  # M_cov of the set as it stands
            return coverage_probabilities(out_vectors, [c for c, _, _ in out], num_classes, at)

        bar = progress_bar(total=num_classes * dpc, desc="condense", leave=False)
        while need.sum():
            r_rep, r_cov = rewards(rep_real, coverage(vectors), y)
            score = r_rep + cfg.coverage_weight * r_cov
            for c in np.flatnonzero(need):  # a class whose examples were all retrieved starts over
                if not available[y == c].any():
                    available[y == c] = True
            eligible = (r_rep >= cfg.rep_threshold) & (r_cov >= cfg.cov_threshold)
            rows, relaxed = retrieve(vectors, y, eligible, available, score, quotas(need, cfg.subset_size), rng,
                                     np.array(retrieved, dtype=int))
            available[rows] = False
            retrieved += rows.tolist()
            target = int(min(cfg.condensed_size, need.sum()))
            members = [(texts[i], pairs[i] if is_pair else None) for i in rows]
            shown = [classes[c] for c in sorted(set(y[rows].tolist()))]
            prompt = template.format(
                count=len(rows), kind=kind, line=line, target=target, labels=", ".join(shown),
                starts=" or ".join(f'"{label}:"' for label in shown),
                examples="\n".join(show_labelled(classes[y[i]], *m) for i, m in zip(rows, members)))
            raw = cached_generate(lm, prompt, cfg.candidates, cfg.max_new_tokens * target, seed * 1_000_003 + len(log),
                                  avoid=shown_texts(members), ngram=cfg.no_copy)
            entry: dict = {"iteration": len(log), "rows": rows.tolist(), "relaxed": relaxed, "prompt": prompt,
                           "raw": raw}
            answers, skipped = self._judge(raw, task, members, out, need, target, coverage, learner, is_pair)
            subsets = [[ex for ex in answer if ex["fate"] == "kept"] for answer in answers]
            sums = [sum(ex["r_rep"] + cfg.coverage_weight * ex["r_cov"] for ex in subset) for subset in subsets]
            best = int(np.argmax([total if subset else -np.inf for subset, total in zip(subsets, sums)]))
            if subsets[best]:
                new = [(ex["class"], ex["text"], ex["pair"]) for ex in subsets[best]]
                new_vectors = np.stack([ex.pop("vector") for ex in subsets[best]])
                entry["chosen"] = best
            else:  # nothing usable written: the best-rewarded real examples of the subset stand for this iteration
                left, keys, picked = need.copy(), {text_key(a, b) for _, a, b in out}, []
                for i in rows[np.argsort(-score[rows], kind="stable")]:
                    new_row = text_key(texts[i], pairs[i] if is_pair else None) not in keys
                    if left[y[i]] and len(picked) < target and new_row:
                        picked.append(int(i))
                        left[y[i]] -= 1
                picked = picked or [int(rows[np.argmax(score[rows])])]  # all of them in the set already: repeat one
                new = [(int(y[i]), texts[i], pairs[i] if is_pair else None) for i in picked]
                new_vectors = vectors[picked]
                entry["chosen"], entry["fallback"] = None, picked
            entry["skipped"] = skipped
            for fate, name in (("echo", "echoes"), ("repeat", "repeats"), ("inconsistent", "inconsistent"),
                               ("surplus", "surplus")):
                entry[name] = sum(ex["fate"] == fate for answer in answers for ex in answer)
            for answer in answers:  # as the log keeps them
                for ex in answer:
                    ex.pop("vector", None)
                    ex["class"] = classes[ex["class"]]
                    ex.update({k: round(ex[k], 4) for k in ("r_rep", "r_cov") if k in ex})
                    if ex["pair"] is None:
                        del ex["pair"]
            entry["answers"] = [{"examples": answer, "score": round(total, 4)} for answer, total in zip(answers, sums)]
            entry["added"] = [[classes[c], a] if b is None else [classes[c], a, b] for c, a, b in new]
            for c, _, _ in new:
                need[c] -= 1
            out += new
            out_vectors = np.concatenate([out_vectors, new_vectors.astype(out_vectors.dtype)])
            log.append(entry)
            bar.update(len(new))
            bar.set_postfix(iterations=len(log), echoes=sum(e["echoes"] for e in log),
                            inconsistent=sum(e["inconsistent"] for e in log))
        bar.close()
        counts = {name: sum(e[name] for e in log) for name in ("skipped", "echoes", "inconsistent", "repeats",
                                                                 "surplus")}
        fallbacks = [e["fallback"] for e in log if e.get("fallback")]
        progress_write(f"condense: {len(log)} iterations, {sum(len(e['raw']) for e in log)} answers; skipped "
                       f"{counts['skipped']} lines that were no usable labelled example; dropped {counts['echoes']} "
                       f"echoes of their prompt's real examples, {counts['inconsistent']} examples the reward model "
                       f"puts in another class, {counts['repeats']} repeats and {counts['surplus']} beyond what their "
                       f"class needed; {len(fallbacks)} iterations kept real examples instead")
        order = sorted(range(len(out)), key=lambda i: out[i][0])  # by class, each class in the order written
        return self._artifact(
            task, seed, kind="text", texts=[out[i][1] for i in order],
            text_pairs=[out[i][2] for i in order] if is_pair else None,
            labels=torch.tensor([out[i][0] for i in order]),
            log={"llm": getattr(lm, "name", cfg.llm), "select": "reward", "reward_model": cfg.reward_model,
                 "skipped_generations": counts["skipped"], "echo_generations": counts["echoes"],
                 "inconsistent_generations": counts["inconsistent"], "repeated_generations": counts["repeats"],
                 "surplus_generations": counts["surplus"], "fallback_iterations": len(fallbacks),
                 "fallback_examples": sum(map(len, fallbacks)), "iterations": log})

    def _judge(self, raw: list[str], task: Task, members: list[tuple[str, str | None]],
               out: list[tuple[int, str, str | None]], need: np.ndarray, target: int, coverage,
               learner: Learner, is_pair: bool) -> tuple[list[list[dict]], int]:
        """Each answer parsed into its examples, each with its fate: ``echo`` (of a real example of the prompt),
        ``repeat`` (of an example written before, in the set or earlier in the answer), ``inconsistent`` (the reward
        model's class is another), ``surplus`` (its class is full, or the answer has given ``target`` already) or
        ``kept``; the judged ones carry their rewards (and, for the set, their sentence vectors). Also the count of
        lines that were no usable example."""
        from .teacher import teacher_logits

        cfg, classes = self.config, task.spec.classes
        answers, skipped = [], 0
        for answer in raw:
            found, bad = parse_labelled(answer, classes, is_pair)
            skipped += bad
            seen, examples = {text_key(a, b) for _, a, b in out}, []
            for c, a, b in found:
                key = text_key(a, b)
                fate = "echo" if echoes((a, b), members, cfg.echo_overlap) else "repeat" if key in seen else None
                seen.add(key)
                examples.append({"class": c, "text": a, "pair": b, "fate": fate})
            answers.append(examples)
        judged = [ex for answer in answers for ex in answer if ex["fate"] is None]
        if judged:  # every answer's new examples through the reward models at once
            cand_texts = [ex["text"] for ex in judged]
            cand_pairs = [ex["pair"] for ex in judged] if is_pair else None
            cand_y = np.array([ex["class"] for ex in judged])
            rep_probs = teacher_logits(task, cfg.reward_model, cand_texts, cand_pairs).softmax(-1).numpy()
            cand_vectors = learner.sentence_vectors(cand_texts, cand_pairs, cache=False)
            rep, cov = rewards(rep_probs, coverage(cand_vectors), cand_y)
            consistent = label_consistent(rep_probs, cand_y)
            for ex, r, v, ok, vector in zip(judged, rep, cov, consistent, cand_vectors):
                ex.update(r_rep=float(r), r_cov=float(v), vector=vector, fate=None if ok else "inconsistent")
        for answer in answers:
            left, kept = need.copy(), 0
            for ex in answer:
                if ex["fate"] is None:
                    if left[ex["class"]] == 0 or kept == target:  # its class is full, or more than was asked for
                        ex["fate"] = "surplus"
                    else:
                        ex["fate"], kept, left[ex["class"]] = "kept", kept + 1, left[ex["class"]] - 1
        return answers, skipped

    def _gradient(self, task: Task, dpc: int, learner: Learner, seed: int, lm) -> DistilledDataset:
        """``select: gradient``: per class, ``dpc`` k-means clusters; per cluster, the candidate whose head gradient
        aligns best with the cluster's mean gradient."""
        from sklearn.cluster import KMeans

        from ..lm import cached_generate
        from .base import class_indices

        cfg = self.config
        texts, pairs, labels = task.columns("train")
        is_pair = pairs is not None
        template = prompt_template(is_pair)
        per_class = class_indices(labels, task.spec.classes, dpc)
        vectors = learner.sentence_vectors(texts, pairs)
        real, _, _ = real_inputs(task, learner)  # encoded once; clusters take rows of it
        model = learner.build(task.num_classes, seed).eval()
        rng = np.random.default_rng(seed)
        out_texts, out_pairs, out_labels, log = [], [], [], []
        echoed = 0
        for c, idx in enumerate(per_class):
            label = task.spec.classes[c]
            km = KMeans(n_clusters=dpc, n_init=3, random_state=int(rng.integers(2**31))).fit(vectors[idx])
            bar = progress_bar(range(dpc), desc=f"condense {label}", leave=False)
            for k in bar:
                rows = idx[km.labels_ == k]
                near = rows[np.argsort(np.linalg.norm(vectors[rows] - km.cluster_centers_[k], axis=1))[: cfg.members]]
                members = [(texts[i], pairs[i] if is_pair else None) for i in near]
                prompt = template.format(kind=cfg.kind, kind_one=cfg.kind.rstrip("s"), label=label,
                                         examples="\n".join(show_example(*m) for m in members))
                raw = cached_generate(lm, prompt, cfg.candidates, cfg.max_new_tokens, seed * 1_000_003 + c * 1_009 + k,
                                      avoid=shown_texts(members), ngram=cfg.no_copy)
                parsed = [p for p in (parse_generation(r, label, is_pair) for r in raw) if p is not None]
                cands = [p for p in parsed if not echoes(p, members, cfg.echo_overlap)]
                entry = {"class": label, "rows": rows.tolist(), "prompt": prompt, "raw": raw,
                         "skipped": len(raw) - len(parsed), "echoes": len(parsed) - len(cands)}
                echoed += entry["echoes"]
                bar.set_postfix(echoes_dropped=echoed)
                if not cands:  # nothing usable and new written: the cluster's central real example stands for it
                    cands, entry["fallback"] = [(texts[near[0]], pairs[near[0]] if is_pair else None)], True
                target = mean_head_gradient(learner, model, batch_of(real, torch.from_numpy(rows)),
                                            torch.full((len(rows),), c))
                # all of a cluster's candidates encoded at once, scored one by one
                proposed = learner.encode([a for a, _ in cands], [b for _, b in cands] if is_pair else None)
                scores = [float(F.cosine_similarity(head_gradient(learner, model, batch_of(proposed, torch.tensor([j])),
                                                                  torch.tensor([c])), target, dim=0))
                          for j in range(len(cands))]
                best = int(np.argmax(scores))
                out_texts.append(cands[best][0])
                out_pairs.append(cands[best][1])
                out_labels.append(c)
                log.append({**entry, "generations": [a if b is None else [a, b] for a, b in cands],
                            "scores": [round(s, 4) for s in scores], "chosen": best})
        skipped = sum(e["skipped"] for e in log)
        fallbacks = sum(e.get("fallback", False) for e in log)
        if skipped or echoed:
            progress_write(f"condense: of {sum(len(e['raw']) for e in log)} generations, skipped {skipped} as empty "
                           f"or malformed and dropped {echoed} as echoes of their prompt's real examples; {fallbacks} "
                           "clusters kept their central real example")
        return self._artifact(task, seed, kind="text", texts=out_texts, text_pairs=out_pairs if is_pair else None,
                              labels=torch.tensor(out_labels),
                              log={"llm": getattr(lm, "name", cfg.llm), "select": "gradient",
                                   "skipped_generations": skipped, "echo_generations": echoed,
                                   "fallback_clusters": fallbacks, "clusters": log})
