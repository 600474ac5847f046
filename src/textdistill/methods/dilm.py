"""dilm, Distilling dataset into a Language Model (Maekawa et al. 2024): the distilled set is text.

Stage 1 fine-tunes a causal LM as a class-conditional generator ("<class_c> text <eos>"; pair tasks join their
two texts with "<sep>"; a class token starts as the embedding of its class name). Stage 2 trains that
generator by gradient matching: per class, the learner's gradient on real examples from representative
teachers (k-means coresets) is matched (1 - cosine) by its gradient on generated examples, each example's loss
weighted by a softmax over its negative generation loss, so the matching loss reaches the generator although
the text is discrete. As in the reference implementation, the learner is re-initialised each outer loop and
trained on real data between generator updates by one AdamW on its own schedule; matching step t reads teacher
t mod ``teachers``; each synthetic batch takes one member of each k-means cluster of the generated pool, which
is renewed every ``regenerate_every`` outer loops. The final set: an over-sampled
pool, ``dpc`` examples per class picked by k-means in the learner's embedding space. Two options not in the
paper serve a generator that is not yet class-conditional (a short stage 1 on CPU): ``guidance`` samples the
final pool with classifier-free guidance against the other classes' start tokens, and ``filter_labels`` drops
generated examples that a linear probe on the learner's vectors of the real data assigns to another class, as
LAMBADA (Anaby-Tavor et al. 2020) filters its generated data.

The generator model lives in ``lm/generator.py`` and its training checkpoints in ``lm/checkpoint.py``.
Stage 1 is cached per (generator, task, stage-1 options); stage 2 checkpoints in the cache and resumes, and
does not depend on ``dpc``, so the budgets of one seed share it. ``outer_loops: 0`` gives the stage-1-only
generator (the "vanilla LM" baseline).
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..cache import build_lock, in_use, key_of
from ..data import Task
from ..distributed import agree, barrier, is_main, shard, sum_across, world
from ..errors import DataError
from ..learners import Learner
from ..lm.checkpoint import load_checkpoint, save_checkpoint
from ..lm.generator import META, Generator
from ..progress import bar as progress_bar
from ..resources import cache_dir, model_revision
from ..distilled import DistilledDataset, check_output
from ..recipe import Recipe
from ..train import train
from .base import (Distiller, MethodConfig, check_finite, class_indices, descend, fresh_model, kmeans_nearest,
                   label_probe, real_batch, register_method, thin)
from .learned_set import fresh_parameters, real_inputs
from .matching import real_gradient



@dataclass
class DiLMConfig(MethodConfig):
    generator: str = field(default="smollm2-135m", metadata={"help": "causal LM: smollm2-135m, a hub id (gpt2) or a path"})
    max_length: int = field(default=32, metadata={"ge": 4, "help": "generator tokens per example, class token and end included"})
    lm_steps: int = field(default=100, metadata={"ge": 0, "help": "stage 1: language-model fine-tuning steps"})
    lm_batch: int = field(default=8, metadata={"ge": 1, "help": "stage 1 batch size"})
    lm_lr: float = field(default=1e-4, metadata={"gt": 0, "help": "stage 1 AdamW learning rate"})
    outer_loops: int = field(default=6, metadata={"ge": 0, "help": "stage 2: learner initialisations (0: stage 1 only)"})
    inner_loops: int = field(default=3, metadata={"ge": 1, "help": "generator updates per initialisation"})
    learner_steps: int = field(default=2, metadata={"ge": 0, "help": "learner steps on real data between updates "
        "(one AdamW run per initialisation, the learner's schedule over inner_loops x learner_steps)"})
    learner_batch: int = field(default=32, metadata={"ge": 1, "help": "batch size of those steps"})
    regenerate_every: int = field(default=3, metadata={"ge": 1, "help": "R: outer loops between renewals of the generated pool"})
    syn_batch: int = field(default=8, metadata={"ge": 1, "help": "generated examples per class per matching step"})
    cluster_batches: bool = field(default=True, metadata={
        "help": "each synthetic batch takes one example from each of syn_batch k-means clusters of the pool (the "
                "reference's cluster-wise batches); off: consecutive slices of the pool"})
    real_batch: int = field(default=64, metadata={"ge": 1, "help": "real examples per class per matching step, drawn "
                                                                   "from one teacher (all of it when it is smaller)"})
    teachers: int = field(default=2, metadata={"ge": 1, "help": "representative teachers: k-means coresets per "
                                                                "class, one per matching step in turn"})
    teacher_size: int = field(default=50, metadata={"ge": 1, "help": "examples per class in each teacher"})
    classifier_only: bool = field(default=True, metadata={"help": "match only the head's gradients (as the paper)"})
    temperature: float = field(default=1.0, metadata={"gt": 0, "help": "of the softmax over negative generation losses"})
    gen_lr: float = field(default=1e-5, metadata={"gt": 0, "help": "stage 2 Adam learning rate of the generator"})
    top_p: float = field(default=0.95, metadata={"gt": 0, "le": 1, "help": "nucleus sampling"})
    gen_batch: int = field(default=32, metadata={"ge": 1, "help": "sequences generated at once"})
    pool_factor: int = field(default=4, metadata={"ge": 1, "help": "final pool: this many times dpc per class, then k-means"})
    guidance: float = field(default=1.0, metadata={"ge": 1,
        "help": "final pool: classifier-free guidance scale against another class's start token (1: off, as in "
                "the paper)"})
    filter_labels: bool = field(default=False, metadata={
        "help": "final pool: keep only examples that a linear probe on the learner's vectors of the real data "
                "assigns to their class (LAMBADA-style; not in the paper)"})
    save_generator: str = field(default="", metadata={"help": "also save the trained generator (kind generator) here"})


def lm_fine_tune(gen: Generator, task: Task, steps: int, batch: int, lr: float, seed: int = 0,
                 progress: bool = True) -> list[float]:
    """Stage 1: next-token training on the task's training texts, each led by its class token; the loss curve.
    Under torchrun each rank computes its rows of every batch and the gradients are summed, so every rank takes
    the same step. Dropout (GPT-2 has it) draws from ``seed``, not from the process's random state, which is left
    as it was; under torchrun rank 0 draws as one process does and every other rank from its own stream of the
    seed (one shared stream would give the rows of different ranks the same masks)."""
    device, rank = gen.model.device, world()[0]
    # fork the generator's own device only: forking every visible GPU is slow and warns
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed if rank == 0 else int(np.random.SeedSequence([seed, rank]).generate_state(1)[0]))
        return _lm_fine_tune(gen, task, steps, batch, lr, seed, progress)


def _lm_fine_tune(gen: Generator, task: Task, steps: int, batch: int, lr: float, seed: int,
                  progress: bool) -> list[float]:
    texts, pairs, labels = task.columns("train")
    params = [p for p in gen.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    order = np.random.default_rng(seed).permutation(len(texts))
    gen.model.train()
    history: list[float] = []
    for step in progress_bar(range(steps), desc="dilm stage 1 (LM)", leave=False,
                             disable=not progress or not is_main()):
        idx = [int(order[(step * batch + i) % len(order)]) for i in range(batch)]
        mine = shard(idx)
        opt.zero_grad()
        loss = torch.zeros((), device=gen.model.device)
        if mine:  # a rank with no rows (more ranks than rows) adds zeros
            enc = gen.encode([labels[i] for i in mine], [texts[i] for i in mine],
                             None if pairs is None else [pairs[i] for i in mine])
            loss = gen.losses(enc).sum() / batch  # this rank's share of the batch mean
            loss.backward()
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        (value,) = sum_across([loss.detach()] + [p.grad for p in params])[:1]
        check_finite("dilm stage 1", value.item(), step)
        opt.step()
        history.append(value.item())
    gen.model.eval()
    return history


@register_method
class DiLM(Distiller):
    name = "dilm"
    description = "a generator LM trained by gradient matching writes the set as text (model-agnostic)"
    Config = DiLMConfig
    uses_device = True

    # -- stage 1 ---------------------------------------------------------------------------------
    def stage1_key(self, task: Task) -> str:
        c = self.config
        # 2: class tokens start from their class names (1: from the start token)
        return key_of("dilm-lm", 2, c.generator, model_revision(c.generator), task.fingerprint, c.max_length,
                      c.lm_steps, c.lm_batch, c.lm_lr)

    def language_model(self, task: Task) -> tuple[Generator, dict]:
        """The stage-1 generator, fine-tuned once per (generator, task, options) and kept in the cache."""
        c = self.config
        if c.lm_steps == 0:  # a generator used as it is (e.g. one saved by --save-generator)
            return Generator.pretrained(c.generator, list(task.spec.classes), c.max_length).to(self.device), {"lm_loss": []}
        folder = cache_dir() / "generators" / self.stage1_key(task)
        with in_use("generators"):  # a `cache clear` meanwhile keeps the generator this run trains and reads
            # Under torchrun every rank trains (together) or none does, as rank 0 finds the cache; rank 0 writes it.
            with build_lock(folder) if is_main() else nullcontext():
                if not agree((folder / META).exists()):
                    gen = Generator.pretrained(c.generator, list(task.spec.classes), c.max_length).to(self.device)
                    history = lm_fine_tune(gen, task, c.lm_steps, c.lm_batch, c.lm_lr)
                    if is_main():
                        gen.save(folder, stage=1, lm_loss=thin(history), task=task.name)
                barrier()
            meta = json.loads((folder / META).read_text())
            return Generator.load(folder).to(self.device), {"lm_loss": meta["lm_loss"]}

    # -- stage 2 ---------------------------------------------------------------------------------
    def teachers(self, task: Task, learner: Learner, seed: int) -> list[list[np.ndarray]]:
        """``teachers`` representative sets: each a k-means coreset per class of the real data (its own draw)."""
        c = self.config
        texts, pairs, labels = task.columns("train")
        per_class = class_indices(labels, task.spec.classes, 1)
        vectors = learner.sentence_vectors(texts, pairs)
        rng = np.random.default_rng(seed)
        return [[idx[kmeans_nearest(vectors[idx], min(c.teacher_size, len(idx)), rng, n_init=1)] for idx in per_class]
                for _ in range(c.teachers)]

    def synthetic_batches(self, pool: list[tuple[list[str], list[str] | None]], learner: Learner,
                          seed: int) -> list[list[np.ndarray]]:
        """Per class, the rows of each synthetic batch of the pool: with ``cluster_batches``, batch i takes the
        i-th member (cyclically, in generation order) of each of ``syn_batch`` k-means clusters of the pool's
        sentence vectors, so that a batch spans the pool; else consecutive slices."""
        from sklearn.cluster import KMeans

        c, out = self.config, []
        count = c.inner_loops * c.regenerate_every
        for texts, pairs in pool:
            if not c.cluster_batches:
                out.append([np.arange(i * c.syn_batch, (i + 1) * c.syn_batch) for i in range(count)])
                continue
            k = min(c.syn_batch, len(texts))
            vectors = learner.sentence_vectors(texts, pairs, cache=False)  # a pool is used once: not cached
            assign = KMeans(k, n_init=1, random_state=seed).fit_predict(vectors)
            clusters = [np.flatnonzero(assign == j) for j in range(k) if (assign == j).any()]
            out.append([np.array([m[i % len(m)] for m in clusters]) for i in range(count)])
        return out

    def matching_step(self, gen: Generator, learner: Learner, model: torch.nn.Module, params: dict,
                      names: list[str], real: dict, real_y: torch.Tensor, teacher: list[np.ndarray],
                      synthetic: list[tuple[list[str], list[str] | None]], rng: np.random.Generator) -> torch.Tensor:
        """The mean over classes of 1 - cos(real gradient on the teacher's rows of the class, generation-weighted
        gradient on the class's synthetic batch)."""
        c, total = self.config, 0.0
        # Only the matched parameters need a graph: the rest enter as constants.
        frozen = {k: (v if k in names else v.detach()) for k, v in params.items()}
        for label, rows in enumerate(teacher):
            idx = real_batch(rng, rows, c.real_batch)
            g_real = torch.cat([g.flatten() for g in real_gradient(learner, model, frozen, names, real, real_y, idx,
                                                                   self.device)])
            texts, pairs = synthetic[label]
            weights = torch.softmax(-gen.losses(gen.encode([label] * len(texts), texts, pairs)) / c.temperature, 0)
            inputs = {k: v.to(self.device) for k, v in learner.encode(texts, pairs).items()}
            y = torch.full((len(texts),), label, device=self.device)
            per_example = F.cross_entropy(learner.forward(model, frozen, inputs), y, reduction="none")
            grads = torch.autograd.grad((per_example * weights).sum(), [frozen[k] for k in names], create_graph=True)
            total = total + 1 - F.cosine_similarity(torch.cat([g.flatten() for g in grads]), g_real, dim=0)
        return total / len(teacher)

    def gradient_matching(self, gen: Generator, task: Task, learner: Learner, seed: int) -> list[float]:
        """Stage 2 in place on ``gen``, resuming from (and checkpointing to) the cache; the matching-loss curve."""
        c = self.config
        if c.outer_loops == 0:
            return []
        stage2 = {k: v for k, v in c.to_dict().items()
                  if k not in ("pool_factor", "guidance", "filter_labels", "save_generator")}
        folder = cache_dir() / "dilm" / key_of(self.stage1_key(task), stage2, learner.name, seed)
        # a `cache clear` meanwhile keeps the checkpoints this run writes and resumes from
        with in_use("dilm"), build_lock(folder) if is_main() else nullcontext():  # ranks read it together
            return self._gradient_matching(gen, task, learner, seed, folder)

    def _gradient_matching(self, gen: Generator, task: Task, learner: Learner, seed: int, folder: Path) -> list[float]:
        c = self.config
        opt = torch.optim.Adam(gen.model.parameters(), lr=c.gen_lr)
        state = load_checkpoint(folder, gen, opt, self.device)
        start, history, pool = state["outer"], state["history"], state["pool"]
        if start == c.outer_loops:
            return history
        real, real_y, _ = real_inputs(task, learner)
        teachers = self.teachers(task, learner, seed)
        pairs = task.spec.pair
        # The learner's own schedule (warm-up, decay) over the run's inner_loops x learner_steps, with dropout off;
        # one AdamW per initialisation, stepped between generator updates (the last segment is never taken).
        base = learner.default_recipe
        recipe = Recipe(steps=c.inner_loops * c.learner_steps or 1, lr=base.lr, warmup=base.warmup,
                        schedule=base.schedule, weight_decay=base.weight_decay, batch_size=c.learner_batch,
                        dropout=False)
        per_pool = c.syn_batch * c.inner_loops * c.regenerate_every
        batches = self.synthetic_batches(pool, learner, seed) if pool else []
        bar = progress_bar(range(start, c.outer_loops), desc=f"dilm stage 2 {task.name}", leave=False)
        for outer in bar:
            if outer % c.regenerate_every == 0 or not pool:
                # the first matching step's generator dropout draws on from where the sampling left torch
                pool = [gen.sample(y, per_pool, pairs=pairs, top_p=c.top_p, batch=c.gen_batch,
                                   seed=seed * 1_000_003 + outer, progress=False, keep_rng=False)
                        for y in range(task.num_classes)]
                batches = self.synthetic_batches(pool, learner, seed)
                gen.model.train()
            model = fresh_model(learner, task, seed, outer, self.device).eval()
            params, optimizer = fresh_parameters(model), {}
            names = learner.head_parameter_names(model) if c.classifier_only else [
                k for k, v in model.named_parameters() if v.requires_grad]
            rng = np.random.default_rng([seed, outer])
            for inner in range(c.inner_loops):
                at, step = (outer % c.regenerate_every) * c.inner_loops + inner, outer * c.inner_loops + inner
                synthetic = [([a[i] for i in rows[at]], None if b is None else [b[i] for i in rows[at]])
                             for (a, b), rows in zip(pool, batches)]
                loss = self.matching_step(gen, learner, model, params, names, real, real_y,
                                          teachers[step % len(teachers)], synthetic, rng)
                descend(self.name, opt, loss, outer, history)
                if c.learner_steps and inner < c.inner_loops - 1:
                    segment = range(inner * c.learner_steps, (inner + 1) * c.learner_steps)
                    params = train(learner, model, real, real_y, recipe, seed=int(rng.integers(2**31)),
                                   params=params, device=self.device, optimizer=optimizer,
                                   lrs=torch.tensor([recipe.lr_at(s) for s in segment]))
            if is_main():
                save_checkpoint(folder, gen, None if outer + 1 == c.outer_loops else opt, outer + 1, history, pool)
            bar.set_postfix(loss=f"{history[-1]:.3f}")
        gen.model.eval()
        return history

    # -- the set ---------------------------------------------------------------------------------
    def run(self, task: Task, dpc: int, learner: Learner, seed: int = 0) -> DistilledDataset:
        c = self.config
        class_indices(task.columns("train")[2], task.spec.classes, 1)  # every class has real examples
        if c.save_generator:
            check_output(c.save_generator, overwrite=True)  # refused now, not after the training
        gen, log = self.language_model(task)
        history = self.gradient_matching(gen, task, learner, seed)
        log["matching_loss"] = thin(history)
        if c.save_generator:  # a `generator` artifact: `--generator DIR --lm-steps 0 --outer-loops 0` writes new sets
            marker = self._artifact(task, seed, kind="generator", labels=torch.zeros(0, dtype=torch.long), log=dict(log))
            gen.save(c.save_generator, marker)
            log["generator"] = str(c.save_generator)
        return self.write_set(gen, task, dpc, learner, seed, log)

    def write_set(self, gen: Generator, task: Task, dpc: int, learner: Learner, seed: int,
                  log: dict) -> DistilledDataset:
        """Generate ``pool_factor * dpc`` examples per class (with ``guidance``; with ``filter_labels``, ones a
        probe trained on the real data assigns to the class) and keep the ``dpc`` nearest the k-means centroids."""
        c, pairs, rng = self.config, task.spec.pair, np.random.default_rng(seed)
        probe = label_probe(task, learner) if c.filter_labels else None
        texts: list[str] = []
        seconds: list[str] = []
        accepted = []
        for y in range(task.num_classes):
            a, b, rate = self.pool(gen, y, c.pool_factor * dpc, dpc, pairs, learner, probe, seed)
            picked = kmeans_nearest(learner.sentence_vectors(a, b), dpc, rng)
            texts += [a[i] for i in picked]
            seconds += [b[i] for i in picked] if b is not None else []
            accepted.append(rate)
        if probe is not None:
            log["probe_accepted"] = accepted
        return self._artifact(task, seed, kind="text", texts=texts, text_pairs=seconds if pairs else None,
                              labels=torch.arange(task.num_classes).repeat_interleave(dpc), log=log)

    def pool(self, gen: Generator, label: int, size: int, least: int, pairs: bool, learner: Learner, probe,
             seed: int, rounds: int = 8) -> tuple[list[str], list[str] | None, float]:
        """``size`` generated examples of ``label``; with a probe, only those it assigns to ``label``, sampling
        again (up to ``rounds`` times) while fewer; the share it accepted."""
        c = self.config
        rows: list[tuple[str, str | None]] = []  # (text, second text of a pair)
        drawn = 0
        for r in range(rounds if probe is not None else 1):
            a, b = gen.sample(label, size, pairs=pairs, top_p=c.top_p, batch=c.gen_batch,
                              seed=seed * 7919 + label + 104729 * r, guidance=c.guidance)
            new = list(zip(a, b or [None] * len(a)))
            drawn += len(new)
            if probe is not None:
                keep = probe.predict(learner.sentence_vectors(a, b)) == label
                new = [row for row, k in zip(new, keep) if k]
            rows += new
            if len(rows) >= size:
                break
        if len(rows) < least:
            raise DataError(f"dilm: the probe accepted only {len(rows)} of {drawn} generated examples of class "
                            f"{label}, fewer than dpc={least}; train the generator longer or turn filter_labels off")
        texts, seconds = zip(*rows[:size])
        return list(texts), list(seconds) if pairs else None, len(rows) / drawn
