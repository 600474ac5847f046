"""Command line: the same names as the Python API (list, distill, evaluate, show, decode, demo, bench, report, compare)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

from .errors import ConfigError, DataError, ResourceMissing, TextDistillError, TextDistillWarning


def _task_args(p: argparse.ArgumentParser, required: bool) -> None:
    g = p.add_argument_group("task")
    g.add_argument("--task", required=required, help="a task name (textdistill list tasks) or a CSV/TSV/JSONL/Parquet file")
    g.add_argument("--data-dir", help="local copy of a standard benchmark (GLUE or HF layout)")
    g.add_argument("--text-col", help="text column of a data file (default: text)")
    g.add_argument("--label-col", help="label column of a data file (default: label)")
    g.add_argument("--pair-col", help="second text column of a pair task")
    g.add_argument("--test-file", help="test file for a data file (default: a seeded stratified split)")
    g.add_argument("--test-size", type=float, help="test fraction when splitting a data file (default: 0.2)")


def _load_task(args: argparse.Namespace):
    from .data import get_task

    return get_task(args.task, data_dir=args.data_dir, text_col=args.text_col, label_col=args.label_col,
                    pair_col=args.pair_col, test_file=args.test_file, test_size=args.test_size)


def _recipe_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training recipe overrides (default: each learner's own, see docs)")
    g.add_argument("--steps", type=int, help="training steps per learner")
    g.add_argument("--lr", type=float, help="peak learning rate")
    g.add_argument("--batch-size", type=int, help="examples per step (default: min(64, set size))")
    g.add_argument("--precision", choices=["float32", "bf16"],
                   help="float32 (default) or bf16 autocast: faster only on CPUs with AVX512-BF16 or AMX, and on GPUs; "
                        "docs/speed.md measures what it changes")


def cmd_list(args: argparse.Namespace) -> None:
    if args.what == "tasks":
        from .data import list_tasks

        tasks = list_tasks()
        width = max(len(t.name) for t in tasks) + 2  # a long name never runs into its class count
        print(f"{'task':<{width}}{'classes':>7}  {'train / test':<20}source")
        for t in tasks:
            print(f"{t.name:<{width}}{t.classes:>7}  {t.size:<20}{t.source}")
        if args.check:
            check_tasks(args.data_dir)
    elif args.what == "learners":
        from .catalog import LEARNERS as DESCRIPTIONS  # the registry's, without importing torch

        rows = {**DESCRIPTIONS, "<hf-id or path>": "any Hugging Face encoder (e.g. bert-base-uncased), fully fine-tuned"}
        width = max(map(len, rows)) + 2  # a long name never runs into its description
        for name, desc in rows.items():
            print(f"{name:<{width}}{desc}")
    elif args.what == "resources":
        from .resources import resource_lines

        print("\n".join(resource_lines()))
    elif not args.options:
        from .catalog import METHODS as DESCRIPTIONS  # the registry's, without importing torch

        width = max(map(len, DESCRIPTIONS)) + 2
        for name, desc in DESCRIPTIONS.items():
            print(f"{name:<{width}}{desc}")
        print("(every method's options: textdistill list methods --options)")
    else:  # the options live in the methods' config classes, which import torch
        from .methods import METHODS

        width = max(map(len, METHODS)) + 2
        for name, cls in METHODS.items():
            print(f"{name:<{width}}{cls.description}")
            for opt, _, default, help_ in cls.Config.options():
                shown = "none" if default in ("", None) else default
                print(f"{'':<{width}}--{opt.replace('_', '-')} (default: {shown}): {help_}")


def cmd_audit(args: argparse.Namespace) -> None:
    from .cache import atomic_write, check_file_output

    if args.json:
        check_file_output(args.json, "--json")  # before the work, not after it
    from .api import audit
    from .distilled import DistilledDataset

    ds = DistilledDataset.load(args.dir)
    report = audit(ds, _task_of(ds, args), learner=args.learner, sample=args.sample,
                   attack_learner=args.attack_learner, attack_seeds=args.attack_seeds)
    print(json.dumps({k: v for k, v in report.items() if k != "verdict"}, indent=1))
    print(report["verdict"])
    if args.json:
        atomic_write(Path(args.json), lambda p: p.write_text(json.dumps(report, indent=1)))


def cmd_cache(args: argparse.Namespace) -> None:
    from .cache import KINDS, cache_info, clear_cache
    from .resources import cache_dir

    if args.action == "clear":
        gone, busy = clear_cache(args.kind)
        print(f"cleared {', '.join(gone) or 'nothing'} under {cache_dir()}")
        if busy:
            print(f"warning: kept {', '.join(busy)}: in use by a running job (deleting it would break the job); "
                  "clear again when it has finished", file=sys.stderr)
        return
    print(f"cache: {cache_dir()} (set TEXTDISTILL_CACHE to move it)")
    for kind, entries, size in cache_info():
        print(f"  {kind:<13}{entries:>7} entries {size / 2**20:>10.1f} MiB  {KINDS[kind]}")


def check_tasks(data_dir: str | None) -> None:
    """Duplicates and train/test overlap (case and whitespace ignored) of every task that loads here."""
    from .data import BUILTIN, get_task, list_tasks
    from .data.task import overlap

    print(f"\n{'task':<14}{'train dup':>10}{'test dup':>10}{'test in train':>15}")
    for t in list_tasks():
        try:
            o = overlap(get_task(t.name, None if t.name in BUILTIN else data_dir))
        except ResourceMissing:
            print(f"{t.name:<14}  not available here (hub or --data-dir)")
            continue
        except DataError as e:
            print(f"{t.name:<14}  {e}")
            continue
        print(f"{t.name:<14}{o['train_duplicates']:>10}{o['test_duplicates']:>10}{o['test_in_train']:>15}")


def cmd_distill(args: argparse.Namespace, extra: list[str]) -> None:
    from .api import distill
    from .distilled import check_output
    from .distributed import is_main
    from .learners import get_learner
    from .methods import METHODS, get_method  # the options of each method's config become its flags

    options: dict = {}
    if args.config:
        import yaml

        try:
            loaded = yaml.safe_load(Path(args.config).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"{args.config}: cannot read the config ({e})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{args.config}: expected a mapping of option: value")
        if "device" in loaded:
            raise ConfigError(f"{args.config}: device is not a method option; pass --device instead")
        options.update(loaded)
    if args.method not in METHODS:
        raise ConfigError(f"unknown method {args.method!r}; known: {', '.join(METHODS)}")
    method_parser = argparse.ArgumentParser(prog=f"textdistill distill --method {args.method}", allow_abbrev=False)
    for opt, typ, default, help_ in METHODS[args.method].Config.options():
        kind = str if typ is bool else typ  # the config reads true/false/yes/no/1/0 and refuses the rest
        method_parser.add_argument(f"--{opt.replace('_', '-')}", dest=opt, type=kind, default=None, help=help_)
    options.update({k: v for k, v in vars(method_parser.parse_args(extra)).items() if v is not None})

    check_output(args.out, args.overwrite)  # before the work, not after it
    # the method's options and the learner's name are checked before the task loads
    method, learner = get_method(args.method, **options), args.learner and get_learner(args.learner)
    ds = distill(_load_task(args), method, args.dpc, learner or None, seed=args.seed, device=args.device)
    if args.device != "cpu" and not method.uses_device:
        print(f"note: method {args.method} trains no model; it ran on the CPU", file=sys.stderr)
    if not is_main():
        return  # rank 0 writes the set
    path = ds.save(args.out, overwrite=args.overwrite)
    step = ds.provenance.distill_step
    print(f"distilled {ds.task.get('name')} with {args.method}: {len(ds)} examples ({args.dpc} per class) in "
          f"{step['seconds']:.1f}s, peak memory {step['peak_rss_mib']} MiB -> {path}")


def _task_of(ds, args: argparse.Namespace):
    """The set's task: --task (and its options) when given, else the registered task its manifest names."""
    from .api import load_task_of

    with warnings.catch_warnings(record=True) as caught:  # printed as the CLI's own lines, at once
        warnings.simplefilter("always", TextDistillWarning)
        task = load_task_of(ds, _load_task(args) if args.task else None, data_dir=args.data_dir)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    return task


def cmd_evaluate(args: argparse.Namespace) -> None:
    from .cache import atomic_write, check_file_output

    if args.json:
        check_file_output(args.json, "--json")  # before the work, not after it
    from .api import evaluate
    from .distilled import DistilledDataset

    if args.full == (args.dir is not None):
        raise ConfigError("evaluate takes a distilled set DIR, or --task TASK --full")
    if args.full:
        if not args.task:
            raise ConfigError("--full needs --task")
        task, source = _load_task(args), None
    else:
        source = DistilledDataset.load(args.dir)
        task = _task_of(source, args)
    recipe = {"steps": args.steps, "lr": args.lr, "batch_size": args.batch_size, "precision": args.precision}
    if args.set_recipe and not args.full:
        raise ConfigError("--set-recipe goes with --full")
    results = evaluate(task, source, args.learner or ["minilm"], seeds=args.seeds, recipe=recipe,
                       device=args.device, cache=not args.no_cache, full_data_recipe=not args.set_recipe)
    for r in results:
        runs = ", ".join("failed" if x["accuracy"] is None else f"{100 * x['accuracy']:.1f}" for x in r.runs)
        print(f"{r.task} | {r.train_set['method']} ({r.train_set['size']} examples) | {r.learner}: "
              f"{r.summary(digits=2)}  [{runs}]")
        if r.accuracy_by_language:  # a multilingual test split
            print(f"  by language: {r.summary_by_language(digits=2)}")
    if args.json:
        payload = results[0].to_dict() if len(results) == 1 else {"results": [r.to_dict() for r in results]}
        atomic_write(Path(args.json), lambda p: p.write_text(json.dumps(payload, indent=1)))


def cmd_show(args: argparse.Namespace) -> None:
    from .cache import check_file_output
    from .distilled import DistilledDataset

    # a negative slice end would silently drop examples from the end
    for flag, value in (("--limit", args.limit), ("--width", args.width)):
        if value < 0:
            raise ConfigError(f"show {flag} must be >= 0, got {value}")
    if args.html:
        check_file_output(args.html, "--html")  # before the task and the map, not after them
    ds = DistilledDataset.load(args.dir)
    if args.html and ds.provenance.dp is not None:
        raise ConfigError(f"show --html: {args.dir} is differentially private, and its page would show the nearest "
                          "real training sentences and a map of the training data, outside the mechanism")
    weights = ds.label_weights
    soft = ", soft labels" if ds.labels.dtype.is_floating_point else ""
    if weights is not None:
        soft += f" with example weights from {float(weights.min()):.2f} to {float(weights.max()):.2f} (shown as xW)"
    print(f"{args.dir}: {ds.kind} set, {len(ds)} examples{_per_class(ds)}{_tokens_of(ds)}, method {ds.method}, "
          f"task {ds.task.get('name')}, seed {ds.seed}{soft}")
    if ds.provenance.dp is not None:
        dp = ds.provenance.dp
        print(f"differentially private: ({dp['epsilon']:.2f}, {dp['delta']:g})-DP over {dp['steps']} releases "
              f"(noise multiplier {dp['noise_multiplier']:.3f}, clip {dp['clip']:g}; {dp['mechanism']})")
    if ds.provenance.fidelity is not None:  # a set written from target vectors: how close the text came to them
        f = ds.provenance.fidelity
        print(f"fidelity: mean cosine to the target vectors {f['mean_cosine_to_target']:.3f} (the nearest real "
              f"sentences: {f['mean_nearest_real_cosine']:.3f}); a probe on the real data agrees with "
              f"{100 * f.get('probe_label_agreement', float('nan')):.0f}% of the labels")
    from .page import set_examples, write_set_page

    words, _ = set_examples(ds)
    for i, (y, text) in enumerate(list(zip(ds.hard_labels.tolist(), words))[: args.limit]):
        if args.width and text and len(text) > args.width:  # a news article would fill the screen
            text = text[: args.width - 1].rstrip() + "…"
        weight = "" if weights is None else f" x{float(weights[i]):.2f}"
        print(f"[{ds.label_names[y]}{weight}] {text or f'<{ds.kind} vector>'}")
    if args.html:
        print(f"page: {write_set_page(ds, _task_of(ds, args), args.html)}")


def _per_class(ds) -> str:
    """' (N per class)', or each class's count where they differ."""
    from collections import Counter

    counts = Counter(ds.hard_labels.tolist())
    if not len(ds):
        return ""
    each = [counts.get(c, 0) for c in range(len(ds.label_names))]
    if len(set(each)) == 1:
        return f" ({each[0]} per class)"
    return " (" + ", ".join(f"{name} {n}" for name, n in zip(ds.label_names, each)) + ")"


def _tokens_of(ds) -> str:
    """', N tokens (whose)': a budget in examples rewards long examples, so show what they hold."""
    from .tokens import count_learner, set_tokens

    if ds.kind == "token-embeddings":
        return f", {set_tokens(ds):,} token positions"
    if ds.kind != "text":
        return ""
    try:
        tokens = set_tokens(ds)
    except ResourceMissing as e:  # a look at a set needs no model: say why the count is missing
        return f", tokens not counted ({e})"
    max_length = (ds.task.get("spec") or {}).get("max_length")
    at = f" at max length {max_length}" if max_length else ""
    return f", {tokens:,} tokens ({count_learner(ds)} tokenizer{at})"


def cmd_decode(args: argparse.Namespace) -> None:
    from .api import decode
    from .distilled import DistilledDataset, check_output

    # resolved (links, ..): --overwrite would replace the learned set with its own decoding, or a folder holding it
    source, out = Path(args.dir).resolve(), Path(args.out).resolve()
    if source == out or source in out.parents or out in source.parents:
        raise ConfigError(f"decode {args.dir} --out {args.out}: the output is, holds or lies inside the set it decodes "
                          f"({source}); choose another --out")
    check_output(args.out, args.overwrite)
    text = decode(DistilledDataset.load(args.dir))
    text.save(args.out, overwrite=args.overwrite)
    print(f"decoded {len(text)} examples to text -> {args.out}")


BAR = "setfit-minilm"  # the learner a user picks for a few labelled examples: every demo table shows it


def cmd_demo(args: argparse.Namespace) -> None:
    """The toolkit's range on mr in a few minutes: a coreset and a learned set beside random picks at the same
    budgets and the full data, one table, written as a report beside the saved sets."""
    from .api import distill, evaluate
    from .data import get_task
    from .learners import FitLearner, get_learner
    from .page import write_set_page

    task, learner, out = get_task("mr"), get_learner(args.learner), Path(args.out)
    print(f"task mr: {len(task.train)} train / {len(task.test)} test; learner {args.learner}; "
          f"{args.seeds} learner seeds per set")
    # the learned set lives in the frozen MiniLM space and trains only that learner (the probe): random picks at
    # its budget are evaluated with the same learner. A learner with its own fit (SetFit) reads text only: the
    # coreset is picked in the frozen MiniLM space, which is SetFit-MiniLM's body before its fine-tuning.
    probe = get_learner("minilm-frozen")
    space = probe if isinstance(learner, FitLearner) else learner
    bar = () if args.learner == BAR else (
        ("random", args.dpc, space, get_learner(BAR), args.bar_seeds,
         "real sentences drawn at random, trained with SetFit: the bar without distilling"),)
    plan = [(args.method, args.dpc, space, learner, args.seeds, "real sentences picked in MiniLM's sentence space"),
            ("random", args.dpc, space, learner, args.seeds, "real sentences drawn at random"), *bar,
            (args.learned, 1, probe, probe, args.seeds, "vectors learned in the frozen MiniLM space, bound to it"),
            ("random", 1, probe, probe, args.seeds, "real sentences drawn at random")]
    rows, sets = [], {}
    for method, dpc, where_from, who, seeds, what in plan:
        t0 = time.time()
        where = out / f"mr-{method}-{dpc}"
        if where not in sets:  # the random set of the bar row is the random row's
            sets[where] = distill(task, method, dpc, where_from, seed=0)
            sets[where].save(where, overwrite=True)
            write_set_page(sets[where], task, where / "page.html")
        (r,) = evaluate(task, sets[where], [who], seeds=seeds, cache=True)
        rows.append((f"{method} ({what})", dpc, len(sets[where]), r, time.time() - t0, str(where)))
    t0 = time.time()
    (full,) = evaluate(task, None, [learner], seeds=args.full_seeds, cache=True)
    rows.append(("full data", None, len(task.train), full, time.time() - t0, "(cached after the first run)"))
    lines = ["| train set | per class | examples | learner | accuracy % (mean ± std) | % of full | seconds | saved |",
             "|---|---|---|---|---|---|---|---|"]
    for name, dpc, n, r, secs, where in rows:
        ok = r.accuracy_mean is not None and full.accuracy_mean is not None and r.learner == full.learner
        frac = f"{100 * r.accuracy_mean / full.accuracy_mean:.0f}" if ok else "-"
        lines.append(f"| {name} | {dpc or 'all'} | {n} | {r.learner} | {r.summary()} | {frac} | {secs:.0f} | {where} |")
    table = "\n".join(lines)
    print("\n" + table)
    report = out / "report.md"
    pages = "".join(f"- [{Path(r[5]).name}]({Path(r[5]).name}/page.html)\n" for r in rows[:-1])
    report.write_text(f"# textdistill demo: mr\n\n{table}\n\nRecipes: sets {json.dumps(rows[0][3].recipe)}; full data "
                      f"{json.dumps(full.recipe)} ({args.full_seeds} seed(s)).\n\nThe sets, drawn:\n\n{pages}")
    print(f"\nsets: {out}/mr-* (each with page.html: its examples and a map); report: {report}. Evaluations are cached in the user cache (TEXTDISTILL_CACHE), "
          "so a second run prints the same table in seconds. Look at a set with `textdistill show DIR`.")


def _int_list(flag: str, text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise ConfigError(f"{flag} takes comma-separated integers (e.g. 1,10), got {text!r}") from None


def _parse_shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard takes I/N (e.g. 0/4), got {text!r}") from None
    if not 0 <= index < count:
        raise ConfigError(f"--shard {text}: need 0 <= I < N")
    return index, count


def cmd_bench(args: argparse.Namespace) -> None:
    from .bench import collect, load_suite, run_suite
    from .distributed import init_from_env, is_main
    from .report import write_report

    suite = load_suite(args.suite)
    if args.learners or args.seeds is not None or args.full_seeds is not None or args.dpc or args.tasks:
        suite = suite.evaluated_with(args.learners and args.learners.split(","), args.seeds, args.full_seeds,
                                     args.dpc and _int_list("--dpc", args.dpc), args.tasks and args.tasks.split(","))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # started by torchrun: data-parallel distillations, no cells
        if not args.distill_only or args.ray or args.report_only or args.workers > 1:
            raise ConfigError("bench under torchrun distils the suite's sets data-parallel: give --distill-only "
                              "(no --ray, --workers or --report-only), then evaluate them with a plain, --workers "
                              "or --ray bench run")
        init_from_env(args.device)
    if args.report_only:
        collect(suite, args.out)
    else:
        run_suite(suite, args.out, device=args.device, shard=_parse_shard(args.shard), distill_only=args.distill_only,
                  ray=args.ray, cpus_per_cell=args.cpus_per_cell, workers=args.workers, progress=is_main())
    if not is_main():
        return
    if args.distill_only:
        print(f"sets saved under {args.out}/sets; run again without --distill-only to evaluate them")
        return
    given = {"--learners": args.learners, "--seeds": args.seeds, "--full-seeds": args.full_seeds, "--dpc": args.dpc,
             "--tasks": args.tasks}
    overrides = "".join(f" {flag} {value}" for flag, value in given.items() if value is not None)
    md, page = write_report(args.out, command=f"textdistill bench {args.suite} --out {args.out}{overrides}")
    print(f"report: {md} and {page}")


def cmd_report(args: argparse.Namespace) -> None:
    from .report import write_report

    md, page = write_report(args.dir, command=args.command_line)
    print(f"report: {md} and {page}")


def cmd_compare(args: argparse.Namespace) -> None:
    from .report import compare

    print(compare(args.a, args.b))


def build_parser() -> argparse.ArgumentParser:
    from .version import __version__

    p = argparse.ArgumentParser(prog="textdistill", description="Text dataset distillation.")
    p.add_argument("--version", action="version", version=f"textdistill {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    device_help = "cpu (default), cuda or cuda:N; checked before any work starts"

    s = sub.add_parser("audit", help="privacy audit of a set: copying, distances, membership inference")
    s.add_argument("dir", help="a distilled set")
    _task_args(s, required=False)
    s.add_argument("--learner", default="minilm-frozen", help="the sentence space of the distances")
    s.add_argument("--sample", type=int, default=500, help="members and non-members each, for membership inference")
    s.add_argument("--attack-learner", help="learner of the loss attack (default: the set's bound learner, else "
                   "--learner)")
    s.add_argument("--attack-seeds", type=int, default=3, help="learners trained on the set for the loss attack")
    s.add_argument("--json", help="write every number to this JSON file")

    s = sub.add_parser("cache", help="what the cache holds (info), or delete it (clear)")
    s.add_argument("action", choices=["info", "clear"], help="info: entries and size per kind; clear: delete")
    s.add_argument("--kind", help="clear only this kind (evals, vectors, teachers, ...); without it, clear keeps "
                                  "converted models and downloads")

    s = sub.add_parser("list", help="list methods, tasks, learners or resources (named models and data)")
    s.add_argument("what", choices=["methods", "tasks", "learners", "resources"], help="what to list")
    s.add_argument("--check", action="store_true",
                   help="tasks: load each one and count duplicates and test examples with a copy in train")
    s.add_argument("--options", action="store_true", help="methods: every option of every method, with its default")
    s.add_argument("--data-dir", help="with --check: local copies of the standard benchmarks (GLUE or HF layout)")

    s = sub.add_parser("distill", help="distil a task into a few examples per class",
                       epilog="Method options (textdistill list methods --options) follow as --name value.")
    _task_args(s, required=True)
    s.add_argument("--method", required=True, help="distillation method (textdistill list methods)")
    s.add_argument("--dpc", type=int, required=True, help="examples per class")
    s.add_argument("--out", required=True, help="directory to write the distilled set to")
    s.add_argument("--learner", help="learner whose space the method works in (default: the method's; minilm for "
                   "most, smollm2-135m for gradmm)")
    s.add_argument("--seed", type=int, default=0, help="seed of the method's random choices (default 0)")
    s.add_argument("--device", default="cpu", help=device_help + " (methods that train models)")
    s.add_argument("--config", help="YAML file of method options (command-line options win)")
    s.add_argument("--overwrite", action="store_true", help="replace --out if it exists")

    s = sub.add_parser("evaluate", help="train fresh learners on a set (or the full data) and test them",
                       description="Train fresh learners on a distilled set (or the full data) and report test "
                                   "accuracy mean ± std over seeds. The default learner is minilm, fully "
                                   "fine-tuned: minutes per run on a CPU (about 2.5 on 2 cores); --learner "
                                   "minilm-frozen takes seconds.")
    s.add_argument("dir", nargs="?", help="a distilled set directory (or give --task and --full)")
    _task_args(s, required=False)
    s.add_argument("--full", action="store_true",
                   help="train on the task's full training split, with the learner's full-data recipe (epochs)")
    s.add_argument("--set-recipe", action="store_true",
                   help="with --full: train with the small sets' recipe (200 steps for minilm) instead")
    s.add_argument("--learner", action="append",
                   help="learner (default: minilm, fine-tuned; repeat for a cross-architecture table)")
    s.add_argument("--seeds", type=int, default=5, help="learner seeds (default 5)")
    s.add_argument("--json", help="write the results here")
    s.add_argument("--device", default="cpu", help=device_help)
    s.add_argument("--no-cache", action="store_true", help="recompute cached runs")
    _recipe_args(s)

    s = sub.add_parser("show", help="print a distilled set's examples (or write them as a page: --html)")
    s.add_argument("dir", help="a distilled set directory")
    s.add_argument("--limit", type=int, default=50, help="print at most this many examples (default 50)")
    s.add_argument("--width", type=int, default=300, help="cut each example at this many characters (default 300; "
                   "0: whole)")
    s.add_argument("--html", metavar="PAGE", help="also write one self-contained HTML page: the examples per class "
                   "with their nearest real training sentences, and a 2-D map of the task's sentence vectors")
    _task_args(s, required=False)

    s = sub.add_parser("decode", help="turn a token-embedding set into a text set (nearest tokens)")
    s.add_argument("dir", help="a token-embedding set directory")
    s.add_argument("--out", required=True, help="directory to write the text set to")
    s.add_argument("--overwrite", action="store_true", help="replace --out if it holds a distilled set")

    s = sub.add_parser("demo", help="the toolkit's range on mr: a coreset and a learned set beside random and full data")
    s.add_argument("--method", default="herding", help="the best coreset method in docs/results.md")
    s.add_argument("--learner", default="minilm-frozen",
                   help="minilm-frozen takes minutes on 2 cores; minilm (fine-tuned) about 2.5 minutes a run")
    s.add_argument("--dpc", type=int, default=10, help="examples per class of the coreset (default 10)")
    s.add_argument("--learned", default="mtt", help="the learned-set method, at 1 per class in the frozen MiniLM "
                   "space (default mtt, the best there in docs/results.md)")
    s.add_argument("--seeds", type=int, default=5, help="learner seeds per distilled set (default 5)")
    s.add_argument("--full-seeds", type=int, default=5, help="learner seeds on the full data (default 5)")
    s.add_argument("--bar-seeds", type=int, default=3, help=f"SetFit ({BAR}) seeds on the random examples: the "
                   "bar a set must clear, what a user gets without distilling (default 3, about 1.5 minutes each)")
    s.add_argument("--out", default="runs/demo", help="where the sets are saved (default runs/demo)")

    s = sub.add_parser("bench", help="run (or resume) a benchmark suite and write its report")
    s.add_argument("suite", help="a suite YAML file (see benchmarks/*.yaml)")
    s.add_argument("--out", required=True, help="result directory (cells/, sets/, results.json, report.*)")
    s.add_argument("--device", default="cpu", help=device_help + " (distillation and evaluation)")
    s.add_argument("--shard", default="0/1", help="I/N: run every N-th cell from the I-th, counting from 0 "
                   "(0/4 ... 3/4 for four parallel processes; default 0/1)")
    s.add_argument("--report-only", action="store_true", help="collect finished cells and render, run nothing")
    s.add_argument("--learners", help="evaluate with these learners (comma-separated) instead of the suite's; the "
                   "methods still work with the suite's first learner, so its sets are shared")
    s.add_argument("--seeds", type=int, help="learner seeds per distilled set instead of the suite's")
    s.add_argument("--full-seeds", type=int, help="learner seeds on the full data instead of the suite's")
    s.add_argument("--dpc", help="examples per class (comma-separated, e.g. 10) instead of the suite's budgets")
    s.add_argument("--tasks", help="run only these of the suite's tasks (comma-separated names, e.g. mr,sst2)")
    s.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="run the cells as Ray tasks: on a local Ray instance, or on the cluster at ADDRESS "
                        "(pip install 'textdistill[ray]')")
    s.add_argument("--cpus-per-cell", type=int, default=1, help="CPUs a Ray cell asks for (default 1)")
    s.add_argument("--workers", type=int, default=1, help="run the cells in this many processes on this machine, "
                   "each with its share of the cores (default 1; at most the cores; 2 on 2 cores does 1.2-1.6x the "
                   "work per hour)")
    s.add_argument("--distill-only", action="store_true",
                   help="save the distilled sets, evaluate nothing (evaluate later, e.g. on a GPU)")

    s = sub.add_parser("report", help="render report.md and report.html again from DIR/results.json")
    s.add_argument("dir", help="a bench result directory")
    s.add_argument("--command-line", help="the command that produced the results, shown at the top")

    s = sub.add_parser("compare", help="compare two benchmark result directories cell by cell")
    s.add_argument("a", help="the first bench result directory")
    s.add_argument("b", help="the second one, compared with the first")
    # No abbreviations: the method options of `distill` are parsed after these, and a prefix of one of ours
    # (learned-labels' --learn of --learner) would be taken for ours.
    for parser in (p, *sub.choices.values()):
        parser.allow_abbrev = False
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "distill":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if args.command == "distill":
            cmd_distill(args, extra)
        else:
            {"list": cmd_list, "audit": cmd_audit, "cache": cmd_cache, "evaluate": cmd_evaluate, "show": cmd_show, "decode": cmd_decode,
             "demo": cmd_demo, "bench": cmd_bench, "report": cmd_report, "compare": cmd_compare}[args.command](args)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under torchrun: the ranks leave together
            from .distributed import finish

            finish()
    except TextDistillError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `textdistill show DIR | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
