"""One self-contained HTML page for a distilled set: its examples per class beside their nearest real training
sentences, and a 2-D map of the task's sentence vectors with the set's examples marked (``textdistill show
DIR --html PAGE``; the bench writes one beside every set it saves)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from .data import Task
from .distilled import DistilledDataset

SPACE = "minilm-frozen"  # the sentence space of the map and of the nearest sentences
MAP_POINTS = 2000  # training sentences drawn on the map (a seeded sample of larger splits)


def set_examples(ds: DistilledDataset) -> tuple[list[str], str]:
    """What each example says, in words (``show`` prints them, the page shows them): the text, the nearest
    tokens of a token-embedding set, or nothing for a vector set; and what that is."""
    if ds.kind == "text":
        pairs = ds.text_pairs or [None] * len(ds)
        return [t if p is None else f"{t} ||| {p}" for t, p in zip(ds.texts, pairs)], "text"
    if ds.kind == "token-embeddings":
        from .learners import get_learner

        learner = get_learner(ds.bound_learner())
        ds.check_inputs(learner)
        tokens = learner.nearest_tokens(ds.tensors["inputs_embeds"], ds.tensors["attention_mask"])
        return [" ".join(t) for t in tokens], "nearest vocabulary tokens"
    return [""] * len(ds), "a learned sentence vector"


def _vectors(ds: DistilledDataset, space, words: list[str]) -> np.ndarray | None:
    """The set's examples in the map's space: their own vectors when the set lives there, else their words'."""
    from .learners import get_learner

    if ds.kind == "features":
        bound = (ds.bound_to or {}).get("id")
        same = bound is not None and get_learner(bound).embedding_id == space.embedding_id
        if same:
            ds.check_inputs(get_learner(bound))
        return ds.tensors["features"].float().numpy() if same else None
    return space.sentence_vectors(words, cache=False)


def _plot_map(path: Path, task: Task, train: np.ndarray, train_y: np.ndarray, ex: np.ndarray | None,
              ex_y: np.ndarray) -> str:
    """A PCA (UMAP when installed) map of the training sentences, the set's examples as large marks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = train if ex is None else np.concatenate([train, ex])
    try:
        import umap

        xy, how = umap.UMAP(random_state=0).fit_transform(points), "UMAP"
    except ImportError:
        centred = points - points.mean(0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        xy, how = centred @ vt[:2].T, "PCA"
    fig, ax = plt.subplots(figsize=(7, 5.5))
    colours = plt.get_cmap("tab10")
    for c, name in enumerate(task.spec.classes):
        mine = train_y == c
        ax.scatter(xy[: len(train)][mine, 0], xy[: len(train)][mine, 1], s=4, alpha=0.25, color=colours(c % 10),
                   label=f"{name} (training)")
        if ex is not None:
            at = xy[len(train):][ex_y == c]
            ax.scatter(at[:, 0], at[:, 1], s=120, marker="*", edgecolor="black", color=colours(c % 10),
                       label=f"{name} (set)")
    ax.set_title(f"{task.name}: training sentences and the set ({how} of MiniLM sentence vectors)")
    ax.legend(fontsize=7, markerscale=1.5)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return how


def set_page_blocks(ds: DistilledDataset, task: Task, root: Path) -> list[tuple]:
    """The page as report blocks (``report.to_html`` renders them); the map's PNG is written under ``root``."""
    from .learners import get_learner, unit

    words, what = set_examples(ds)
    texts, pairs, labels = task.columns("train")
    space = get_learner(SPACE).for_task(task)
    train, train_y = unit(space.sentence_vectors(texts, pairs)), np.asarray(labels)
    ex = _vectors(ds, space, words)
    ex = None if ex is None else unit(ex)
    ex_y = ds.hard_labels.numpy()
    soft, weights = ds.labels.dim() == 2, ds.label_weights
    blocks: list[tuple] = [
        ("h1", f"{ds.method} set of {task.name}: {len(ds)} examples"),
        ("p", f"kind {ds.kind} ({what}); {_tokens_line(ds, task)}seed {ds.seed}; {'soft' if soft else 'hard'} "
              f"labels; distilled with textdistill {ds.version}; config {ds.config}"),
    ]
    for c, name in enumerate(ds.label_names):
        rows = []
        for i in np.flatnonzero(ex_y == c):
            label = name if not soft else _soft_label(name, ds.labels[i], None if weights is None else weights[i])
            near = ("", "", "")
            if ex is not None:
                j = int(np.argmax(train @ ex[i]))
                near = (texts[j] if pairs is None else f"{texts[j]} ||| {pairs[j]}", task.spec.classes[labels[j]],
                        f"{float(train[j] @ ex[i]):.3f}")
            rows.append([label, words[i] or "(a vector)", *near])
        blocks += [("h2", f"class {name}: {len(rows)} example{'' if len(rows) == 1 else 's'}"),
                   ("table", ["label", "example", "nearest real training sentence", "its label", "cosine"], rows)]
    sample = np.random.default_rng(0).permutation(len(train))[:MAP_POINTS]
    how = _plot_map(root / "map.png", task, train[sample], train_y[sample], ex, ex_y)
    caption = (f"{how} of {len(sample)} training sentences of {task.name} (small dots) and the set's examples "
               "(stars), per class" + ("" if ex is not None else "; this set's vectors live in another space"))
    return blocks + [("h2", "Map"), ("img", "map.png", caption)]


def _tokens_line(ds: DistilledDataset, task: Task) -> str:
    """'N tokens (whose); ': what the examples hold, since a budget in examples rewards long ones."""
    from .tokens import count_learner, set_tokens

    tokens = set_tokens(ds, task=task)
    if tokens is None:
        return ""
    if ds.kind == "token-embeddings":
        return f"{tokens:,} token positions; "
    return f"{tokens:,} tokens ({count_learner(ds)} tokenizer at max length {task.spec.max_length}); "


def write_set_page(ds: DistilledDataset, task: Task, page: str | Path) -> Path:
    """Write the set's page to ``page`` (one file: the map is embedded)."""
    from .atomic import atomic_write
    from .report import to_html

    page = Path(page)
    with tempfile.TemporaryDirectory() as tmp:
        text = to_html(set_page_blocks(ds, task, Path(tmp)), Path(tmp), title=f"{ds.method} set of {task.name}")
    atomic_write(page, lambda p: p.write_text(text))
    return page


def _soft_label(name: str, row, weight) -> str:
    """A soft label: its values (a class distribution, or unrestricted labels as they are), and its example's
    weight where the set has weights (DistilledDataset.label_weights)."""
    shown = f"{name} ({', '.join(f'{p:.2f}' for p in row.tolist())})"
    return shown if weight is None else f"{shown}, weight {float(weight):.2f}"
