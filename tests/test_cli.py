import json

import pytest

from textdistill.cli import main


@pytest.fixture
def csv_task(tmp_path, mr_small):
    texts, _, labels = mr_small.columns("train")
    f = tmp_path / "reviews.csv"
    with open(f, "w") as out:
        out.write("review,sentiment\n")
        for t, y in zip(texts, labels):
            out.write('"{}",{}\n'.format(t.replace('"', '""'), ["neg", "pos"][y]))
    return f


def test_list(capsys):
    assert main(["list", "tasks"]) == 0
    out = capsys.readouterr().out
    assert "mr" in out and "3,000 / 1,000" in out and "ag_news" in out
    assert main(["list", "methods", "--options"]) == 0
    assert "--n-init" in capsys.readouterr().out
    assert main(["list", "learners"]) == 0
    assert "minilm-frozen" in capsys.readouterr().out


def test_distill_evaluate_show_on_a_user_csv(tmp_path, csv_task, capsys):
    out = tmp_path / "set"
    config = tmp_path / "kmeans.yaml"
    config.write_text("n_init: 3\n")
    args = ["distill", "--task", str(csv_task), "--text-col", "review", "--label-col", "sentiment", "--method", "kmeans",
            "--dpc", "2", "--out", str(out), "--learner", "minilm-frozen", "--config", str(config), "--n-init", "2"]
    assert main(args) == 0
    assert json.loads((out / "manifest.json").read_text())["config"]["n_init"] == 2  # the command line wins
    report = tmp_path / "r.json"
    assert main(["evaluate", str(out), "--learner", "minilm-frozen", "--learner", "textcnn-glove", "--seeds", "2",
                 "--steps", "10", "--json", str(report), "--no-cache"]) == 2  # a file task is given again
    assert main(["evaluate", str(out), "--task", str(csv_task), "--text-col", "review", "--label-col", "sentiment",
                 "--learner", "minilm-frozen", "--learner", "textcnn-glove", "--seeds", "2",
                 "--steps", "10", "--json", str(report), "--no-cache"]) == 0
    results = json.loads(report.read_text())["results"]
    assert [r["learner"] for r in results] == ["minilm-frozen", "textcnn-glove"]
    assert {"task", "accuracy_mean", "accuracy_std", "runs", "recipe"} <= set(results[0])
    assert results[0]["runs"][1]["seed"] == 1 and results[0]["recipe"]["steps"] == 10
    capsys.readouterr()
    assert main(["show", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "[neg]" in shown and "[pos]" in shown
    assert main(["show", str(out), "--width", "12"]) == 0
    cut = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    assert cut and all(len(line.split("] ", 1)[1]) <= 12 for line in cut) and any(line.endswith("…") for line in cut)
    single = tmp_path / "one.json"
    assert main(["evaluate", "--task", str(csv_task), "--text-col", "review", "--label-col", "sentiment", "--full",
                 "--learner", "minilm-frozen", "--seeds", "1", "--json", str(single)]) == 0
    assert json.loads(single.read_text())["learner"] == "minilm-frozen"


def test_errors_exit_2_with_a_message(tmp_path, capsys):
    assert main(["distill", "--task", "mr", "--method", "nope", "--dpc", "1", "--out", str(tmp_path / "x")]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "is not a distilled set" in capsys.readouterr().err
    assert main(["distill", "--task", str(tmp_path / "none.csv"), "--method", "random", "--dpc", "1",
                 "--out", str(tmp_path / "y")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()
    # a method option that begins like one of distill's own (--learn, --learner) is the method's, not ours
    assert main(["distill", "--task", "mr", "--method", "learned-labels", "--learn", "texts", "--dpc", "1",
                 "--out", str(tmp_path / "z")]) == 2
    assert "learn must be one of labels, weights, both" in capsys.readouterr().err


def test_demo_shows_a_coreset_and_a_learned_set_beside_random_and_full_data(tmp_path, capsys):
    main(["demo", "--seeds", "1", "--full-seeds", "1", "--bar-seeds", "1", "--dpc", "2", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [r.split("|")[1].strip().split(" (")[0] for r in rows] == ["herding", "random", "random", "mtt", "random",
                                                                       "full data"]
    assert [r.split("|")[4].strip() for r in rows][:3] == ["minilm-frozen", "minilm-frozen", "setfit-minilm"]
    assert sorted(p.name for p in tmp_path.glob("mr-*")) == ["mr-herding-2", "mr-mtt-1", "mr-random-1", "mr-random-2"]
    report = (tmp_path / "report.md").read_text()
    assert all(r in report for r in rows) and str(tmp_path / "report.md") in out
    assert all((p / "page.html").exists() and f"({p.name}/page.html)" in report for p in tmp_path.glob("mr-*"))


def test_show_html_writes_a_page_with_nearest_sentences_and_a_map(tmp_path, capsys):
    """A coreset of real sentences: each is its own nearest training sentence (cosine 1); a vector set shows its
    vectors' nearest sentences. Where Chromium is installed, the page renders headless, as a user opens it."""
    import shutil
    import subprocess

    main(["distill", "--task", "mr", "--method", "herding", "--dpc", "2", "--learner", "minilm-frozen",
          "--out", str(tmp_path / "h")])
    main(["show", str(tmp_path / "h"), "--html", str(tmp_path / "h.html")])
    assert f"page: {tmp_path / 'h.html'}" in capsys.readouterr().out
    page = (tmp_path / "h.html").read_text()
    assert page.count("<td>1.000</td>") == 4 and "data:image/png;base64," in page and "class positive" in page
    main(["distill", "--task", "mr", "--method", "dm", "--dpc", "1", "--learner", "minilm-frozen",
          "--iterations", "5", "--out", str(tmp_path / "v")])
    main(["show", str(tmp_path / "v"), "--html", str(tmp_path / "v.html")])
    page = (tmp_path / "v.html").read_text()
    assert page.count("(a vector)") == 2 and "<td>1.000</td>" not in page
    chromium = shutil.which("chromium")
    if chromium:
        shot = tmp_path / "h.png"
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1000,1600",
                        f"--screenshot={shot}", (tmp_path / "h.html").as_uri()], check=True, timeout=120,
                       capture_output=True)
        assert shot.stat().st_size > 20_000  # text and the map drawn, not a blank page
