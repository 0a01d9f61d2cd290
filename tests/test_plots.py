"""Each kind of plot, rendered and checked on its artists: the legend's box covers no drawn point of any line, the
title says what was certified or attacked (never a file path), the axes span the data without being degenerate.

The overlap check here is written apart from ``rs_plugins.results.figures``: it redraws each line's path from its
data (steps expanded by hand), samples it every pixel, and looks for a sample inside the legend's box.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rs_plugins.attacks import summary
from rs_plugins.attacks.tradeoff import tradeoff_figure
from rs_plugins.cli import certify as certify_cli
from rs_plugins.cli import main
from rs_plugins.host import Host
from rs_plugins.nets import SmallCNN
from rs_plugins.results import compare
from rs_plugins.results.files import Row
from rs_plugins.results.report import plot_certified_accuracy


def _path(line) -> np.ndarray:
    """The line as drawn, in data coordinates: 'steps-pre' goes up (or down) first, then across."""
    x, y = np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)
    if line.get_drawstyle() in ("steps", "steps-pre") and len(x) > 1:
        xs, ys = [x[0]], [y[0]]
        for i in range(1, len(x)):
            xs += [x[i - 1], x[i]]
            ys += [y[i], y[i]]
        x, y = np.array(xs), np.array(ys)
    return np.column_stack([x, y])


def covered_points(fig) -> list[str]:
    """For each axes' legend: the lines with a drawn point inside its box (sampled every pixel)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    found = []
    for ax in fig.axes:
        legend = ax.get_legend()
        if legend is None:
            continue
        box = legend.get_window_extent(renderer)
        for line in ax.get_lines():
            points = line.get_transform().transform(_path(line)) if len(line.get_xdata()) else np.zeros((0, 2))
            for a, b in zip(points[:-1], points[1:]) if len(points) > 1 else [(p, p) for p in points]:
                t = np.linspace(0, 1, int(np.hypot(*(b - a))) + 2)[:, None]
                sample = a + t * (b - a)
                inside = (sample[:, 0] > box.x0) & (sample[:, 0] < box.x1) & (sample[:, 1] > box.y0) & (
                    sample[:, 1] < box.y1)
                if inside.any():
                    found.append(line.get_label())
                    break
    return found


def _rows(count: int, top: float, seed: int) -> list[Row]:
    g = np.random.default_rng(seed)
    rows = []
    for i in range(count):
        correct = g.random() < 0.85
        radius = float(g.random() * top) if correct else 0.0
        rows.append(Row(i, i % 10, i % 10 if correct else -1, radius, correct, 0.1))
    return rows


# -- certified accuracy: certify --plot, report --plot ----------------------------------------------------------


def test_six_crowded_curves_keep_their_legend_off_the_data(tmp_path):
    runs = []
    for k in range(6):
        path = tmp_path / f"run{k}.tsv"
        lines = [f"{r.idx}\t{r.label}\t{r.predict}\t{r.radius!r}\t{int(r.correct)}\t0:00:01\t100\n"
                 for r in _rows(100, 0.3 + 0.2 * k, k)]  # fmt: skip
        path.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\tsamples\n" + "".join(lines))
        settings = dict(noise="gaussian", sigma=0.25 * (1 + k % 3), noise_option={}, n=1000, alpha=0.001,
                        data="digits", split="test", model=["rs_plugins.nets:SmallCNN"], mixer=None)  # fmt: skip
        path.with_name(path.name + ".json").write_text(json.dumps(settings))
        runs.append(path)
    labels = [f"technique {k}" for k in range(6)]
    fig = compare.plot_comparison(compare.load_runs(runs, labels, build_noise=Host().noise), tmp_path / "c.png")
    ax = fig.axes[0]
    assert covered_points(fig) == []
    assert len(ax.get_legend().get_texts()) == 7  # six runs and the dotted marks' entry
    assert ax.get_title() == "digits test, rs_plugins.nets:SmallCNN\nN = 1,000, α = 0.001, 100 images"
    top = max(r.radius for k in range(6) for r in _rows(100, 0.3 + 0.2 * k, k))
    assert ax.get_ylim() == (0.0, 1.0) and ax.get_xlim()[0] == 0 and ax.get_xlim()[1] >= top
    assert ax.get_xlabel() == "l2 radius" and ax.get_ylabel() == "certified accuracy"


def test_a_legend_stays_inside_where_there_is_room(tmp_path):
    fig = plot_certified_accuracy({"gaussian σ = 0.25": _rows(50, 0.5, 0)}, tmp_path / "one.png", title="t")
    ax = fig.axes[0]
    fig.canvas.draw()
    legend, frame = ax.get_legend().get_window_extent(), ax.get_window_extent()
    assert frame.x0 <= legend.x0 and legend.x1 <= frame.x1 and frame.y0 <= legend.y0 and legend.y1 <= frame.y1
    assert covered_points(fig) == []


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("plots")
    torch.manual_seed(0)
    torch.save(SmallCNN().state_dict(), root / "a.pt")
    argv = ["train-denoiser", "--data", "digits", "--sigma", "0.25", "--depth", "3", "--width", "4", "--epochs", "1",
            "--batch-size", "256", "--val-images", "0", "--checkpoint-dir", str(root / "dn"), "--no-progress"]
    assert main(argv) == 0  # fmt: skip
    return root


def _certify_plot(monkeypatch, argv) -> object:
    made = []

    def keep(*args, **kwargs):
        made.append(plot_certified_accuracy(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(certify_cli, "plot_certified_accuracy", keep)
    assert main(["certify", "--data", "digits", "--sigma", "0.25", "--n0", "10", "--n", "50", "--limit", "3",
                 "--no-progress", *argv]) == 0  # fmt: skip
    return made[0]


def test_a_denoised_run_s_plot_says_which_denoiser(checkpoints, tmp_path, monkeypatch, capsys):
    fig = _certify_plot(monkeypatch, ["--model", "rs_plugins.nets:SmallCNN", "--checkpoint", str(checkpoints / "a.pt"),
                                      "--denoiser", f"dncnn:{checkpoints / 'dn' / 'denoiser.pt'}", "--out",
                                      str(tmp_path / "d.tsv"), "--plot", str(tmp_path / "d.png")])  # fmt: skip
    ax = fig.axes[0]
    assert ax.get_title().startswith("digits test, dncnn denoiser + rs_plugins.nets:SmallCNN\ncohen, N = 50, α = 0.001")
    assert [t.get_text() for t in ax.get_legend().get_texts()][0].startswith("gaussian σ = 0.25 + dncnn (ACR ")
    assert str(tmp_path) not in ax.get_title() and covered_points(fig) == []
    capsys.readouterr()


def test_a_mixed_run_s_plot_says_which_mixture_and_alpha(checkpoints, tmp_path, monkeypatch, capsys):
    model = ["--model", "rs_plugins.nets:SmallCNN", "--checkpoint", str(checkpoints / "a.pt")]
    fig = _certify_plot(monkeypatch, [*model, *model, "--mixer", "mix", "--mixer-option", "alpha=0.9", "--certifier",
                                      "mixed", "--out", str(tmp_path / "m.tsv"), "--plot", str(tmp_path / "m.png")])
    title = fig.axes[0].get_title()
    assert "mix (alpha=0.9) of rs_plugins.nets:SmallCNN + rs_plugins.nets:SmallCNN\nmixed, N = 50" in title
    assert covered_points(fig) == []
    capsys.readouterr()


# -- attack --plot ------------------------------------------------------------------------------------------------


def test_the_attack_plot_names_the_attack_and_the_model_not_the_file(checkpoints, tmp_path, monkeypatch, capsys):
    pytest.importorskip("torchattacks")
    made = []

    def keep(*args, **kwargs):
        made.append(plot(*args, **kwargs))
        return made[-1]

    plot = summary.plot_robust_accuracy
    monkeypatch.setattr(summary, "plot_robust_accuracy", keep)
    out = tmp_path / "runs" / "pgd.tsv"
    assert main(["attack", "--model", "rs_plugins.nets:SmallCNN", "--checkpoint", str(checkpoints / "a.pt"), "--data",
                 "digits", "--limit", "4", "--attack", "pgdl2", "--eps", "0.25", "0.5", "--attack-option", "steps=2",
                 "--out", str(out), "--plot", str(tmp_path / "pgd.png"), "--no-progress"]) == 0  # fmt: skip
    ax = made[0].axes[0]
    assert ax.get_title() == ("digits test, rs_plugins.nets:SmallCNN\nPGDL2 (L2) on the base classifier, 4 images")
    assert "pgd.tsv" not in ax.get_title() and str(tmp_path) not in ax.get_title()
    assert ax.get_ylim() == (0.0, 1.02) and ax.get_xlabel() == "eps (L2)"
    assert covered_points(made[0]) == []
    capsys.readouterr()


# -- tradeoff ------------------------------------------------------------------------------------------------------


def _tradeoff_rows(clean, robust, certified):
    alphas = [0.0, 0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    rows = [{"mixer": f"alpha={a:g}", "alpha": a, "clean_accuracy": clean(a), "robust_accuracy": robust(a),
             **{f"certified_{r:g}": certified(a, r) for r in (0, 0.25, 0.5)}} for a in alphas]  # fmt: skip
    rows.append({"mixer": "adaptive", "alpha": "", "clean_accuracy": clean(0.0), "robust_accuracy": robust(0.9),
                 **{f"certified_{r:g}": certified(0.9, r) for r in (0, 0.25, 0.5)}})  # fmt: skip
    return rows


def test_the_tradeoff_plot_is_readable_when_every_point_is_at_one():
    fig = tradeoff_figure(_tradeoff_rows(lambda a: 1.0, lambda a: 1.0, lambda a, r: 1.0), title="APGD eps=1")
    for ax in fig.axes:
        low, high = ax.get_ylim()
        assert high - low >= 0.2 and low < 1.0 < high <= 1.05  # not 0.96-1.04 around a single value
        labels = [t for t in ax.texts if t.get_text()]
        assert [t.get_text() for t in labels] == ["0, 0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 1"]  # one spot, one label
    assert fig.get_suptitle() == "APGD eps=1"
    assert covered_points(fig) == []


def test_the_tradeoff_plot_shows_the_certified_accuracies_and_labels_alphas_apart():
    rows = _tradeoff_rows(lambda a: 0.99 - 0.3 * a, lambda a: 0.1 + 0.6 * a, lambda a, r: (0.7 - r) * (0.3 + 0.7 * a))
    fig = tradeoff_figure(rows, title="APGD eps=1 on 8 images, sigma=0.5")
    robust, certified = fig.axes
    assert robust.get_xlabel() == "robust accuracy under the attack"
    assert certified.get_xlabel() == "certified accuracy of the mixture"
    names = [line.get_label() for line in certified.get_lines()]
    assert [n for n in names if n.startswith("fixed")] == ["fixed α, r = 0", "fixed α, r = 0.25", "fixed α, r = 0.5"]
    for ax in fig.axes:
        fig.canvas.draw()
        boxes = [t.get_window_extent() for t in ax.texts]
        assert len(boxes) >= 4 and not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
        xs = [x for line in ax.get_lines() for x in line.get_xdata()]
        assert ax.get_xlim()[0] <= min(xs) and max(xs) <= ax.get_xlim()[1]
    assert covered_points(fig) == []


def test_the_p_a_histogram_panel_keeps_its_legend_off_its_bars(tmp_path):
    g = np.random.default_rng(0)
    curves = {"A": _rows(80, 0.5, 1), "B": _rows(80, 0.8, 2)}
    spread = {"A": list(g.beta(8, 2, 80)), "B": list(g.beta(5, 2, 80))}
    fig = plot_certified_accuracy(curves, tmp_path / "h.png", p_lower=spread)
    histogram = fig.axes[1]
    fig.canvas.draw()
    box = histogram.get_legend().get_window_extent()
    for patch in histogram.patches:
        outline = patch.get_transform().transform(patch.get_path().vertices)
        for a, b in zip(outline[:-1], outline[1:]):
            sample = a + np.linspace(0, 1, int(np.hypot(*(b - a))) + 2)[:, None] * (b - a)
            inside = (sample[:, 0] > box.x0) & (sample[:, 0] < box.x1) & (sample[:, 1] > box.y0) & (
                sample[:, 1] < box.y1)
            assert not inside.any(), patch.get_label()
    assert covered_points(fig) == []
