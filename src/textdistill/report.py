"""Reports from a benchmark's ``results.json``: Markdown and self-contained HTML with PNG plots; comparisons."""

from __future__ import annotations

import base64
import html
import itertools
import json
from collections import defaultdict
from pathlib import Path

from .errors import ConfigError

FULL_SET_RECIPE = "full, set recipe"  # the method of full-data runs trained with the small sets' recipe

# A report is a list of blocks, rendered once as Markdown and once as HTML:
# ("h1"|"h2"|"h3"|"p", text), ("table", header, rows), ("img", relative path, caption), ("links", [(text, href)]).


def duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{seconds:.0f} s" if seconds < 60 else f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def load_results(path: str | Path) -> dict:
    path = Path(path)
    path = path / "results.json" if path.is_dir() else path
    try:
        results = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: not a benchmark results file ({e})") from None
    if "records" not in results:
        raise ConfigError(f"{path}: not a benchmark results file (no 'records')")
    return results


def aggregate(records: list[dict]) -> dict[tuple, dict]:
    """(task, learner, method, dpc) -> every run pooled over distilled sets, with costs. dpc None is full data."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["task"], r["learner"], r["method"], r["dpc"])].append(r)
    out = {}
    for key, rs in groups.items():
        runs = [x for r in rs for x in r["runs"]]
        accs = [100 * x["accuracy"] for x in runs if x.get("accuracy") is not None]  # failed runs have None
        mean = sum(accs) / len(accs) if accs else None  # None: every run of the cell failed
        distill = [r["steps"].get("distill") or r["steps"].get("decode") for r in rs]
        distill = [d for d in distill if d]
        out[key] = {
            "mean": mean, "std": (sum((a - mean) ** 2 for a in accs) / len(accs)) ** 0.5 if accs else None,
            "runs": len(accs), "failed": len(runs) - len(accs),
            # a method that ignores its seed (herding) gives the same set every time: its runs are not over n sets
            "sets": len(rs), "distinct": len({r["train_set"].get("fingerprint") or i for i, r in enumerate(rs)}),
            "size": rs[0]["train_set"]["size"], "device": rs[0].get("device", "cpu"),
            "distill_s": sum(d["seconds"] for d in distill) / len(distill) if distill else None,
            "distill_mib": max(d["peak_rss_mib"] for d in distill) if distill else None,
            "distill_cuda_mib": max((d.get("peak_cuda_mib") or 0) for d in distill) if distill else None,
            "run_s": sum(x["seconds"] for x in runs) / len(runs),
            # tokens per set, the mean over the sets; None where a set lacks the count (cells recorded before it,
            # sets of vectors)
            "tokens": sum(r["tokens"] for r in rs) / len(rs) if all(r.get("tokens") is not None for r in rs)
            else None,
        }
    return out


def _pm(cell: dict | None) -> str:
    if cell is None:
        return "-"
    if cell["mean"] is None:
        return f"failed ({cell['failed']} runs)"
    failed = f" ({cell['failed']} failed)" if cell.get("failed") else ""
    distinct = cell.get("distinct", cell["sets"])
    if distinct < cell["sets"]:
        failed += f" (over {distinct} distinct set{'s' if distinct > 1 else ''} of {cell['sets']})"
    spread = f" ± {cell['std']:.1f}" if cell["runs"] > 1 else ""  # one run has no spread to show
    return f"{cell['mean']:.1f}{spread}{failed}"


def _tokens(cell: dict | None) -> str:
    """Tokens per set, or "" where the cell did not record them."""
    return "" if cell is None or cell.get("tokens") is None else f"{cell['tokens']:,.0f}"


def _finished(cell: dict | None) -> dict | None:
    """The cell when at least one of its runs finished (gains, fractions and plots need a mean)."""
    return cell if cell is not None and cell["mean"] is not None else None


def _ordered(values) -> list:
    return list(dict.fromkeys(values))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers
    import matplotlib.pyplot as plt

    return plt


def _plot_curves(path: Path, title: str, dpcs: list[int], series: dict[str, dict], full: dict | None) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4))
    # one colour per method, shared by its decoded text (dash-dot, hollow): 12 curves stay tellable apart
    palette = itertools.cycle(c for c in plt.rcParams["axes.prop_cycle"].by_key()["color"] if c != "#7f7f7f")
    colours = {}
    for method, cells in series.items():
        xs = [d for d in dpcs if d in cells]
        base = method.removesuffix("+text")
        if method == "random":
            style = {"color": "gray", "linestyle": "--"}
        else:
            if base not in colours:
                colours[base] = next(palette)
            style = {"color": colours[base]}
            if base != method:
                style |= {"linestyle": "-.", "markerfacecolor": "none"}
        ax.errorbar(xs, [cells[d]["mean"] for d in xs], yerr=[cells[d]["std"] for d in xs], marker="o",
                    capsize=3, label=method, **style)
    if full:
        ax.axhline(full["mean"], color="black", linestyle=":", label="full data")
    ax.set_xscale("log")
    ax.set_xticks(dpcs, [str(d) for d in dpcs])
    ax.set_xlabel("examples per class")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))  # beside the curves, not over them
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_heatmap(path: Path, title: str, rows: list[str], cols: list[str], values: list[list[float | None]]) -> None:
    import numpy as np

    plt = _pyplot()

    grid = np.array([[np.nan if v is None else v for v in row] for row in values], dtype=float)
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(cols), 1 + 0.45 * len(rows)))
    im = ax.imshow(grid, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=20)
    ax.set_yticks(range(len(rows)), rows)
    for i in range(len(rows)):
        for j in range(len(cols)):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.1f}", ha="center", va="center", color="white", fontsize=8)
    fig.colorbar(im, ax=ax, label="accuracy (%)")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def report_blocks(results: dict, out: Path, command: str | None = None) -> list[tuple]:
    """The report's content; writes its PNG plots under ``out/plots``."""
    suite, agg = results["suite"], aggregate(results["records"])
    blocks: list[tuple] = [("h1", f"Benchmark report: {suite['name']}")]
    if suite.get("description"):
        blocks.append(("p", suite["description"]))
    if command:
        blocks.append(("p", f"Produced by `{command}`."))
    for env in results.get("environments", []):
        blocks.append(("p", "Environment: " + ", ".join(f"{k} {v}" for k, v in env.items())))
    if results.get("cost", {}).get("cells"):
        blocks.append(("p", _cost_line(results["cost"])))
    if missing := results.get("missing"):
        more = f"; and {len(missing) - 10} more" if len(missing) > 10 else ""
        blocks.append(("p", f"**Incomplete**: {len(missing)} cell(s) not run yet: " + "; ".join(missing[:10]) + more))
    blocks.append(("p", "Cells: test accuracy % (mean ± standard deviation over all runs, distilled sets x learner "
                        "seeds; the population standard deviation, numpy's std with ddof=0), then the gain over "
                        "random at the same budget in points and the fraction of full-data accuracy. A cell whose "
                        "distilled sets are not all different (a method that ignores its seed) says over how many "
                        "distinct sets its runs are."))
    if any(r.get("tokens") is not None for r in results["records"]):
        blocks.append(("p", "Tokens: beside each budget, the tokens of a set (the mean over its sets) as the table's "
                            "learner reads them: its tokenizer, cut at the task's max length, special tokens included; "
                            "a token-embedding set's positions. A budget in examples rewards long examples; blank "
                            "where a cell did not record them."))
    # The bar: the random sets trained with the learner a user would pick for a few examples (SetFit), shown in
    # every learner's table; a learner met only as the bar gets no table of its own.
    bar = suite.get("bar")
    own = set(suite.get("learners") or [])
    tasks = _ordered(k[0] for k in agg)
    for task in tasks:
        blocks.append(("h2", task))
        learners = _ordered(k[1] for k in agg if k[0] == task and (k[1] != bar or bar in own or not own))
        for learner in learners:
            cells = {k: v for k, v in agg.items() if k[0] == task and k[1] == learner}
            # the suite's budgets, so that a budget with no finished cell yet shows as "-", not as nothing
            dpcs = sorted({*suite.get("dpc", []), *(k[3] for k in cells if k[3] is not None)})
            methods = _ordered(k[2] for k in cells if k[3] is not None)
            full = cells.get((task, learner, "full", None))
            full_ok = _finished(full)
            bar_cells = {d: cells_bar for d in dpcs if learner != bar
                         and (cells_bar := agg.get((task, bar, "random", d))) is not None}
            # beside each budget, the tokens per set this learner reads, where the cells recorded them
            counted = any(c.get("tokens") is not None for k, c in cells.items() if k[3] is not None) \
                or any(c.get("tokens") is not None for c in bar_cells.values())
            rows = []
            for m in methods:
                row = [m]
                for d in dpcs:
                    c = cells.get((task, learner, m, d))
                    text = _pm(c)
                    tokens = _tokens(c)
                    c, base = _finished(c), _finished(cells.get((task, learner, "random", d)))
                    if c and base and m != "random":
                        text += f" ({c['mean'] - base['mean']:+.1f}"
                        text += f", {100 * c['mean'] / full_ok['mean']:.0f}%)" if full_ok else ")"
                    elif c and full_ok:
                        text += f" ({100 * c['mean'] / full_ok['mean']:.0f}%)"
                    row += [text, tokens] if counted else [text]
                rows.append(row)
            if bar_cells:
                row = [f"SetFit bar: {bar} on the random sets"]
                for d in dpcs:
                    c, base = _finished(bar_cells.get(d)), _finished(cells.get((task, learner, "random", d)))
                    text = _pm(bar_cells.get(d))
                    if c and base:
                        text += f" ({c['mean'] - base['mean']:+.1f} over this learner's random)"
                    row += [text, _tokens(bar_cells.get(d))] if counted else [text]
                rows.append(row)
            header = ["method"] + [h for d in dpcs for h in ([f"{d}/class", "tokens"] if counted else [f"{d}/class"])]
            for method, name in (("full", "full data"), (FULL_SET_RECIPE, "full data, small-set recipe")):
                if c := cells.get((task, learner, method, None)):
                    runs = f" ({c['runs']} run{'s' * (c['runs'] != 1)})"
                    rows.append([f"{name} ({c['size']})", _pm(c) + runs] + [""] * (len(header) - 2))
            blocks.append(("h3", f"{task}, learner {learner}"))
            blocks.append(("table", header, rows))
            below = [f"{m} at {d}/class ({c['mean']:.1f} < {b['mean']:.1f})" for d in dpcs
                     if (b := _finished(bar_cells.get(d))) for m in methods if m != "random"
                     if (c := _finished(cells.get((task, learner, m, d)))) and c["mean"] < b["mean"]]
            if below:
                blocks.append(("p", f"Below the SetFit bar with {learner}: " + "; ".join(below) + "."))
            if dpcs:
                plot = Path("plots") / f"{task}-{learner}.png".replace("/", "_")
                series = {m: {d: cells[(task, learner, m, d)] for d in dpcs if _finished(cells.get((task, learner, m, d)))}
                          for m in methods}
                _plot_curves(out / plot, f"{task}, {learner}", dpcs, series, full_ok)
                blocks.append(("img", str(plot), f"{task}, {learner}: accuracy against examples per class"))
        blocks += _cross_architecture(agg, task, learners, out)
        blocks += _costs(agg, task)
        blocks += _privacy(results["records"], task)
    blocks += _published(results, agg)
    return blocks


def _cost_line(cost: dict) -> str:
    workers = cost.get("workers", 1)
    line = (f"Cost of the {cost['cells']} finished cells: {duration(cost.get('compute_seconds', 0.0))} of computing "
            "(each cell's distillation and evaluation runs, as measured when they ran)")
    if cost.get("wall_seconds") is not None:
        at_once = (f" with up to {workers} cells at once (`--workers {workers}`; a cell run beside others counts at "
                   "its share)") if workers > 1 else ""
        line += f", {duration(cost['wall_seconds'])} of the cells' wall time{at_once}"
    if cost.get("peak_rss_mib") is not None:
        line += (f"; peak memory {cost['peak_rss_mib']:.0f} MiB, the largest any step measured"
                 + (f" (per process; {workers} processes ran at once)" if workers > 1 else ""))
    if cost.get("peak_cuda_mib"):
        line += f", GPU {cost['peak_cuda_mib']:.0f} MiB"
    return line + "."


def _cross_architecture(agg: dict, task: str, learners: list[str], out: Path) -> list[tuple]:
    if len(learners) < 2:
        return []
    dpc = max(k[3] for k in agg if k[0] == task and k[3] is not None)
    methods = _ordered(k[2] for k in agg if k[0] == task and k[3] == dpc)
    methods = [m for m in methods if sum((task, l, m, dpc) in agg for l in learners) > 1] + ["full"]
    keys = [[(task, l, m, None if m == "full" else dpc) for l in learners] for m in methods]
    values = [[agg[k]["mean"] if k in agg else None for k in ks] for ks in keys]
    plot = Path("plots") / f"{task}-cross-architecture.png".replace("/", "_")  # a name never leaves plots/
    _plot_heatmap(out / plot, f"{task}: text sets at {dpc}/class across learners", methods, learners, values)
    rows = [[m] + ["failed" if v is None and k in agg else "-" if v is None else f"{v:.1f}" for v, k in zip(vs, ks)]
            for m, vs, ks in zip(methods, values, keys)]
    return [("h3", f"{task}: cross-architecture ({dpc} per class; sets that any learner can read)"),
            ("table", ["train set"] + learners, rows),
            ("img", str(plot), f"{task}: cross-architecture heat map")]


def _costs(agg: dict, task: str) -> list[tuple]:
    rows = []
    for (t, learner, method, dpc), c in agg.items():
        if t != task or c["distill_s"] is None or method == "random":
            continue
        gpu = f", GPU {c['distill_cuda_mib']:.0f} MiB" if c["distill_cuda_mib"] else ""
        rows.append([method, str(dpc), learner, f"{c['distill_s']:.1f}", f"{c['distill_mib']:.0f}{gpu}",
                     f"{c['run_s']:.1f}", c["device"]])
    if not rows:
        return []
    return [("h3", f"{task}: costs"),
            ("table", ["method", "per class", "evaluated with", "distil (or decode) s", "peak MiB", "s per eval run",
                       "device"], rows)]


def _privacy(records: list[dict], task: str) -> list[tuple]:
    """One row per audited set (suites with ``audit: true``): copying, distance, membership attack AUCs."""
    def pct(v):
        return "" if v is None else f"{100 * v:.0f}%"

    def num(v):
        return "" if v is None else f"{v:.2f}"

    rows, seen = [], set()
    for r in records:
        a, key = r.get("audit"), (r["method"], r["dpc"], r.get("set_seed"))
        if r["task"] != task or not a or key in seen:
            continue
        seen.add(key)
        rows.append([r["method"], str(r["dpc"]), str(r.get("set_seed")), str(a["exact_copies"] if
                     a["exact_copies"] is not None else "(no text)"), pct(a["max_word_overlap_train"]),
                     num(a["set_to_train_cosine"]), num(a.get("distance_auc")), num(a.get("loss_auc"))])
    if not rows:
        return []
    return [("h3", f"{task}: privacy audit"),
            ("p", "Per distilled set: verbatim training examples, mean maximal word overlap with train, cosine to "
                  "the nearest training example, and membership-attack ROC AUC (0.5 is chance; only for sets "
                  "distilled on NAME:validation). `textdistill audit DIR` gives every number."),
            ("table", ["method", "per class", "set", "copies", "word overlap", "nearest cosine", "distance AUC",
                       "loss AUC"], rows)]


def _published(results: dict, agg: dict) -> list[tuple]:
    rows = []
    for p in results["suite"].get("published", []):
        dpc = None if p["dpc"] == "full" else p["dpc"]
        ours = [v for k, v in agg.items() if k[0] == p["task"] and k[2] == p["method"] and k[3] == dpc
                and (p.get("learner") is None or k[1] == p["learner"])]
        rows.append([p["task"], p["method"], str(p["dpc"]), _pm(ours[0]) if ours else "not run",
                     f"{p['accuracy']:.1f}", p["source"]])
    if not rows:
        return []
    return [("h2", "Beside the published numbers"),
            ("table", ["task", "method", "per class", "ours", "published", "source"], rows)]


def to_markdown(blocks: list[tuple]) -> str:
    out = []
    for b in blocks:
        if b[0] in ("h1", "h2", "h3"):
            out.append("#" * int(b[0][1]) + " " + b[1])
        elif b[0] == "p":
            out.append(b[1])
        elif b[0] == "table":
            out.append("| " + " | ".join(b[1]) + " |\n|" + "---|" * len(b[1]))
            out[-1] += "".join("\n| " + " | ".join(r) + " |" for r in b[2])
        elif b[0] == "img":
            out.append(f"![{b[2]}]({b[1]})")
        elif b[0] == "links":
            out.append("\n".join(f"- [{text}]({href})" for text, href in b[1]))
    return "\n\n".join(out) + "\n"


def to_html(blocks: list[tuple], root: Path, title: str = "textdistill report") -> str:
    """One file that opens without a server: the plots are embedded as data URIs."""
    body = []
    for b in blocks:
        if b[0] in ("h1", "h2", "h3", "p"):
            body.append(f"<{b[0]}>{html.escape(b[1])}</{b[0]}>")
        elif b[0] == "table":
            head = "".join(f"<th>{html.escape(h)}</th>" for h in b[1])
            rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in b[2])
            body.append(f"<table><tr>{head}</tr>{rows}</table>")
        elif b[0] == "links":
            items = "".join(f'<li><a href="{html.escape(href)}">{html.escape(text)}</a></li>' for text, href in b[1])
            body.append(f"<ul>{items}</ul>")
        elif b[0] == "img":
            data = base64.b64encode((root / b[1]).read_bytes()).decode()
            body.append(f'<figure><img alt="{html.escape(b[2])}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{html.escape(b[2])}</figcaption></figure>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;"
             "margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}figure{margin:1em 0}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_report(out: str | Path, command: str | None = None) -> tuple[Path, Path]:
    """Render ``out/report.md`` and ``out/report.html`` (with ``out/plots/*.png``) from ``out/results.json``."""
    out = Path(out)
    results = load_results(out)
    blocks = report_blocks(results, out, command)
    # the page bench writes beside each set of a finished cell, where this machine has it (sets/ is a local
    # folder: a suite resumed on another machine has only the sets distilled there)
    pages = [out / a / "page.html" for a in _ordered(r["artifact"] for r in results["records"] if r.get("artifact"))]
    pages = [p for p in pages if p.exists()]
    if pages:
        blocks += [("h2", "The distilled sets"), ("p", "Each set's examples, their nearest real training sentences "
                   "and a map of the task (pages in this machine's sets/ folder):"),
                   ("links", [(p.parent.name, str(p.relative_to(out))) for p in pages])]
    (out / "report.md").write_text(to_markdown(blocks))
    (out / "report.html").write_text(to_html(blocks, out))
    return out / "report.md", out / "report.html"


def compare(a: str | Path, b: str | Path) -> str:
    """A Markdown table of the cells two result directories share, with the difference, and those only one has."""
    agg_a, agg_b = aggregate(load_results(a)["records"]), aggregate(load_results(b)["records"])
    rows = []
    for key in _ordered([*agg_a, *agg_b]):
        ca, cb = agg_a.get(key), agg_b.get(key)
        if ca and cb:
            diff = f"{cb['mean'] - ca['mean']:+.1f}" if _finished(ca) and _finished(cb) else "-"
        else:
            diff = "only in " + ("A" if ca else "B")
        rows.append([key[0], key[1], key[2], "full" if key[3] is None else str(key[3]), _pm(ca), _pm(cb), diff])
    return to_markdown([("p", f"A: {a}  \nB: {b}"),
                        ("table", ["task", "learner", "method", "per class", "A", "B", "B - A"], rows)])
