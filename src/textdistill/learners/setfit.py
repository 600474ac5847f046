"""SetFit (Tunstall et al., 2022): a sentence-transformers body fine-tuned contrastively on sentence pairs, then a
logistic-regression head on its sentence vectors. It has no single functional forward to train through the shared
loop, so it is a ``FitLearner``: evaluation calls ``fit`` and records ``settings`` as the recipe.

It trains through the ``setfit`` package (1.2.0 imports and trains with transformers 5 and sentence-transformers 6):
its pair sampler (``num_iterations`` x n positive pairs and as many negative ones for n texts: 20 of each per text
at the default) and its body trainer (CosineSimilarityLoss: cosine 1 for two texts of one class, 0 for two of
different classes). The head is the one SetFit uses, scikit-learn's ``LogisticRegression()``, fitted here rather
than by ``Trainer.train`` so that it can take sample weights. The paper's settings are the defaults: 20 pair
iterations, batch 16, one epoch, body lr 2e-5 with 10% warm-up and weight decay 0.01, and texts cut at the body's
own max length (256 tokens for MiniLM, 384 for MPNet) whatever the task's.

Soft labels: the pairs come from each row's argmax (a pair is either positive or negative). The head learns the
distributions themselves: every text is repeated once per class with that class's probability as its sample
weight, which makes the logistic loss the soft cross-entropy the loop learners train on, and a row's mass (the
example weight of learned-labels' ``--learn weights``) that text's weight. Rows with a negative entry (bptt's
unrestricted labels, decoded to text) are not distributions: the head takes their argmax.

Text sets only: its body reads text, so a token-embedding or features set is refused (evaluation says so). Pair
tasks join the two texts with the body's separator token. A run is seeded and deterministic on the CPU: the
``setfit`` trainer seeds Python, numpy and torch globally, so ``fit`` restores the callers' random states after it.
"""

from __future__ import annotations

import copy
import os
import random
import sys
import tempfile
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version

import numpy as np
import torch

from ..errors import ConfigError, ResourceMissing
from ..progress import bar as progress_bar
from ..resources import model_revision, resolve_model
from ..seeds import check_seed
from .base import FitLearner, Fitted, Learner, register_learner
from .transformer import TransformerLearner, _quiet_transformers

# The paper's few-shot settings; ``max_steps`` None: the epochs decide the number of body steps.
SETTINGS = {"fit": "setfit", "loss": "CosineSimilarityLoss", "num_iterations": 20, "batch_size": 16, "epochs": 1,
            "max_steps": None, "body_lr": 2e-5, "warmup": 0.1, "weight_decay": 0.01, "head": "LogisticRegression",
            "head_C": 1.0}
# evaluate's recipe overrides (--steps, --lr, --batch-size) and the settings they set
OVERRIDES = {"steps": "max_steps", "lr": "body_lr", "batch_size": "batch_size"}


class SetFitLearner(FitLearner):
    """SetFit with a sentence-transformers ``body`` (a named encoder such as 'minilm', or a model folder)."""

    # A whole training split: 20 iterations over 3,000 MR texts would be 7,500 body steps (hours on a CPU); the
    # body stops at 500 steps (8,000 pairs), the head trains on every text.
    full_data = {"max_steps": 500}

    def __init__(self, name: str, body: str) -> None:
        self.name = name
        self.body = body
        self.encoder = TransformerLearner(body)  # the pretrained body's sentence vectors: the coreset space
        self._max_length: int | None = None  # None: the body's own
        self._templates: dict[str, object] = {}  # the loaded body, shared by the copies with_max_length makes

    @property
    def max_length(self) -> int:  # type: ignore[override]
        return self._max_length if self._max_length is not None else int(self._template().max_seq_length)

    @max_length.setter
    def max_length(self, value: int) -> None:
        self._max_length = value

    def for_task(self, task) -> Learner:
        return self  # SetFit cuts texts at its body's own max length (the paper's setting), not at the task's

    def _template(self):
        """The pretrained body as a ``SentenceTransformer`` on the CPU, loaded once (each fit trains a copy)."""
        if "body" not in self._templates:
            from sentence_transformers import SentenceTransformer

            path = resolve_model(self.body)
            try:
                with _quiet_transformers():
                    self._templates["body"] = SentenceTransformer(path, device="cpu")
            except OSError as e:
                raise ResourceMissing(f"learner {self.name!r}: cannot load its body {self.body!r} from {path} as a "
                                      f"sentence-transformers model ({e})") from None
        return self._templates["body"]

    def settings(self, overrides: dict | None = None, full_data: bool = False) -> dict:
        values = self.overridden({**SETTINGS, "max_length": self.max_length, **(self.full_data if full_data else {})},
                                 overrides, OVERRIDES)
        for key in ("max_steps", "batch_size"):
            if values[key] is not None and (isinstance(values[key], bool) or not isinstance(values[key], int)
                                            or values[key] < 1):
                raise ConfigError(f"learner {self.name!r}: {key} must be a positive integer, got {values[key]!r}")
        if isinstance(values["body_lr"], bool) or not isinstance(values["body_lr"], (int, float)) \
                or not np.isfinite(values["body_lr"]) or values["body_lr"] <= 0:
            raise ConfigError(f"learner {self.name!r}: lr must be a finite number > 0, got {values['body_lr']!r}")
        return values

    def fit(self, texts: list[str], pairs: list[str] | None, labels: torch.Tensor, num_labels: int, settings: dict,
            seed: int, device: str = "cpu", progress: bool = False) -> Fitted:
        check_seed(seed, f"learner {self.name}")
        if str(device) not in ("cpu", "cuda", "cuda:0"):
            raise ConfigError(f"learner {self.name!r} trains where the Hugging Face Trainer puts it: cpu or cuda "
                              f"(the first GPU), not {device!r}")
        labels = torch.as_tensor(labels)
        hard = labels.argmax(-1) if labels.dim() == 2 else labels.long()
        if hard.unique().numel() < 2:
            raise ConfigError(f"learner {self.name!r}: SetFit needs texts of two classes at least (a negative pair "
                              f"joins two classes); every text here is labelled {int(hard[0])}")
        setfit = _setfit()
        from sklearn.linear_model import LogisticRegression
        from transformers import PrinterCallback, ProgressCallback

        joined = self._joined(texts, pairs)
        body = copy.deepcopy(self._template()).to(device)
        body.max_seq_length = settings["max_length"]
        model = setfit.SetFitModel(model_body=body, model_head=LogisticRegression(C=settings["head_C"]))
        with _random_states_kept(), _cpu_only(str(device) == "cpu"), \
                tempfile.TemporaryDirectory(prefix="textdistill-setfit-") as tmp:
            args = setfit.TrainingArguments(
                output_dir=tmp, batch_size=settings["batch_size"], num_epochs=settings["epochs"],
                num_iterations=settings["num_iterations"], max_steps=settings["max_steps"] or -1,
                body_learning_rate=settings["body_lr"], warmup_proportion=settings["warmup"],
                l2_weight=settings["weight_decay"], loss=_loss(settings["loss"]), seed=seed, report_to="none",
                save_strategy="no", logging_strategy="no", show_progress_bar=False)
            trainer = setfit.Trainer(model=model, args=args)
            for callback in (PrinterCallback, ProgressCallback):  # our bar, without the metrics printed to stdout
                trainer.remove_callback(callback)
            if progress:
                trainer.add_callback(_bar(f"setfit {self.body} body"))
            trainer.st_trainer.args.dataloader_pin_memory = str(device) != "cpu"  # no pinned memory without a GPU
            trainer.train_embeddings(joined, hard.tolist())
            state = trainer.st_trainer.state
            log = {"pairs": len(trainer.st_trainer.train_dataset), "body_steps": state.global_step,
                   "body_loss": next((round(float(h["train_loss"]), 5) for h in reversed(state.log_history)
                                      if "train_loss" in h), None)}
        vectors = model.encode(joined, batch_size=64)
        x, y, weight = _head_rows(np.asarray(vectors), labels, hard)
        model.model_head.fit(x, y, sample_weight=weight)

        head = model.model_head

        def logits(texts: list[str], pairs: list[str] | None = None) -> torch.Tensor:
            """Log-probabilities [n, num_labels]; a class no training text had is -inf (never predicted)."""
            vectors = np.asarray(model.encode(self._joined(texts, pairs), batch_size=64))
            seen = torch.from_numpy(head.predict_log_proba(vectors))
            out = torch.full((len(vectors), num_labels), float("-inf"), dtype=seen.dtype)
            out[:, torch.as_tensor(head.classes_, dtype=torch.long)] = seen
            return out

        return Fitted(logits, log)

    def _joined(self, texts: list[str], pairs: list[str] | None) -> list[str]:
        if pairs is None:
            return list(texts)
        sep = self._template().tokenizer.sep_token
        return [f"{a} {sep} {b}" for a, b in zip(texts, pairs)]

    @property
    def embedding_id(self) -> str:
        return self.encoder.embedding_id  # the pretrained body's vectors: the encoder's cache

    def _sentence_vectors(self, texts: list[str], pairs: list[str] | None) -> np.ndarray:
        return self.encoder.with_max_length(self.max_length)._sentence_vectors(texts, pairs)

    def input_width(self) -> int | None:
        return None  # reads text, never vectors

    def describe(self) -> dict:
        try:
            package = version("setfit")
        except PackageNotFoundError:
            package = "not installed"
        return {**super().describe(), "body": self.body, "revision": model_revision(self.body), "setfit": package}


def _setfit():
    """The ``setfit`` package, quiet (it sets its own logger to info when imported)."""
    first = "setfit" not in sys.modules
    try:
        with _quiet_transformers():
            import setfit
    except ImportError as e:
        raise ResourceMissing(f"the SetFit learners need the setfit package ({e}): run `pip install setfit` "
                              "(or `make setup`)") from None
    if first:  # its own logger back at its default once; a level set afterwards stands
        setfit.logging.set_verbosity_warning()
    return setfit


def _loss(name: str):
    """A sentence-transformers loss class by name (its module moved in sentence-transformers 6)."""
    try:
        from sentence_transformers.sentence_transformer import losses
    except ImportError:
        from sentence_transformers import losses
    return getattr(losses, name)


def _head_rows(vectors: np.ndarray, labels: torch.Tensor, hard: torch.Tensor):
    """The head's training rows: (vectors, class ids, sample weights or None). Class distributions (non-negative
    rows) become one row per (text, class) with the probability as weight: the soft cross-entropy, exactly."""
    if labels.dim() != 2 or bool((labels < 0).any()):
        return vectors, hard.numpy(), None
    probs = labels.detach().double().numpy()
    rows, classes = np.nonzero(probs > 0)
    return vectors[rows], classes, probs[rows, classes]


@contextmanager
def _random_states_kept():
    """Python's, numpy's and torch's global random states as they were before: the setfit trainer seeds them all."""
    py, npy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng():
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)


@contextmanager
def _cpu_only(on: bool):
    """Accelerate, which picks the Trainer's device, on the CPU even where a GPU is visible."""
    before = os.environ.get("ACCELERATE_USE_CPU")
    if on:
        os.environ["ACCELERATE_USE_CPU"] = "true"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("ACCELERATE_USE_CPU", None)
        else:
            os.environ["ACCELERATE_USE_CPU"] = before


def _bar(desc: str):
    """A Trainer callback that draws the body's training steps as one tqdm bar."""
    from transformers import TrainerCallback

    class Bar(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.bar = progress_bar(total=state.max_steps, desc=desc, unit="step", leave=False)

        def on_step_end(self, args, state, control, **kwargs):
            self.bar.update(1)

        def on_train_end(self, args, state, control, **kwargs):
            self.bar.close()

    return Bar()


@register_learner("setfit-minilm", "SetFit: all-MiniLM-L6-v2 fine-tuned on sentence pairs, logistic-regression head")
def _setfit_minilm() -> Learner:
    return SetFitLearner("setfit-minilm", "minilm")


@register_learner("setfit-mpnet", "SetFit: all-mpnet-base-v2 fine-tuned on sentence pairs, logistic-regression head")
def _setfit_mpnet() -> Learner:
    return SetFitLearner("setfit-mpnet", "mpnet")
