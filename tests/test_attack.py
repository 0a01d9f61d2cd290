"""``rs-plugins attack`` and ``rs_plugins.attack``: adversaries against base, smoothed and mixed classifiers.

The evidence is closed-form: for a linear two-class model the smallest adversarial perturbation is known exactly,
d = |w.x + b| / ||w||_2 in l2 and |w.x + b| / ||w||_1 in l-infinity, and its Gaussian-smoothed classifier is
certified at exactly d. A correct attack breaks every point whose distance is below eps and none above, and never
breaks a certificate.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import rs_plugins
from rs_plugins import cli
from rs_plugins.attacks.adversaries import EOT_ATTACKS, make_adversary
from rs_plugins.builtin import gaussian as gaussian_module
from rs_plugins.builtin import sources as sources_module
from rs_plugins.builtin.gaussian import GaussianNoise
from rs_plugins.certify.smoothing import cohen_certify
from rs_plugins.results.files import ATTACK_COLUMNS, AttackRow, ResultsFile, Row, read_attack_results, read_results
from rs_plugins.testing import LinearClassifier, tiny_classifier

TESTS = Path(__file__).resolve().parent
PLUGIN_DIR = TESTS.parent / "docs" / "examples" / "rs-example-plugin"
FAST = ["--device", "cpu", "--no-progress", "--trust-model-file"]  # the tests make their TorchScript files


def linear_problem(num: int = 24, dim: int = 16, seed: int = 0):
    """A linear two-class model and images well inside [0, 1] (so no clipping interferes), labelled correctly.

    Returns (model, x, y, l2 distance, l-infinity distance) with the distances to the decision boundary.
    """
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(dim, generator=g)
    x = 0.35 + 0.3 * torch.rand(num, 1, 4, dim // 4, generator=g)
    score = x.flatten(1).double() @ w.double()
    middle = score.sort().values[num // 2 - 1 : num // 2 + 1]
    b = -float(middle.mean())  # half the points on each side, none on the boundary
    model = LinearClassifier(w, b)
    margin = (score + b).abs()
    y = (score + b > 0).long()
    return model, x, y, margin / w.double().norm(), margin / w.double().abs().sum()


def robust_by_image(result, eps):
    return {row.idx: row.robust for row in result.rows if row.eps == eps}


@pytest.mark.parametrize("attack, norm, distance", [("PGDL2", "L2", 3), ("PGD", "Linf", 4)])
def test_pgd_breaks_exactly_the_points_closer_than_eps(attack, norm, distance):
    """PGD (l2 or l-infinity) on the linear model: every point whose exact distance is 3% below eps is broken and
    none whose distance is above eps (no attack can cross, but one that left the ball would)."""
    model, x, y, *distances = linear_problem()
    d = distances[distance - 3]
    eps = [float(d.quantile(q)) for q in (0.25, 0.5, 0.75)]
    result = rs_plugins.attack(model, x, y, attack=attack, eps=eps, options={"steps": 100})
    assert len(result.rows) == len(x) * len(eps)
    checked = 0
    for e in eps:
        robust = robust_by_image(result, e)
        for i in range(len(x)):
            if d[i] < 0.97 * e:
                assert not robust[i], f"{attack}: image {i} at distance {float(d[i]):.4f} survived eps {e:.4f}"
                checked += 1
            elif d[i] > e:
                assert robust[i], f"{attack}: image {i} at distance {float(d[i]):.4f} broken at eps {e:.4f}"
    assert checked >= len(eps) * len(x) // 4
    assert all(row.perturbation <= row.eps * (1 + 1e-5) for row in result.rows)
    assert result.robust_accuracy(eps[0]) > result.robust_accuracy(eps[-1])


def test_minimal_perturbation_attack_counts_only_within_eps():
    """DeepFool takes no radius: it runs once, and at each eps its point counts only if it lies within eps. On the
    linear model its perturbation is the exact distance (plus its 2% overshoot)."""
    model, x, y, d, _ = linear_problem()
    eps = [float(d.quantile(0.5)), 10.0]
    result = rs_plugins.attack(model, x, y, attack="deepfool", eps=eps)
    far = [row for row in result.rows if row.eps == 10.0]
    assert not any(row.robust for row in far)
    for row in far:
        assert row.perturbation == pytest.approx(float(d[row.idx]) * 1.02, rel=1e-3)
    for row in result.rows:
        if row.eps == eps[0]:
            assert row.robust == (row.perturbation == 0.0)
            assert row.robust == (float(d[row.idx]) * 1.02 > eps[0])


def certified_rows(model, x, y, noise, *, n):
    generators = [torch.Generator().manual_seed(i) for i in range(len(x))]
    certs = cohen_certify(model, x, noise, n0=100, n=n, alpha=0.001, batch_size=2000, generator=generators)
    return [Row(i, int(y[i]), c.prediction, c.radius, c.prediction == int(y[i]), 0.0) for i, c in enumerate(certs)]


def test_certified_images_are_not_broken_below_their_radius_and_are_above_it():
    """Smoothed linear model: CERTIFY's radius is a lower bound on the exact distance, so the EOT attack with PREDICT
    never turns an image certified at r into another class at eps < r. The same attack past the exact distance does
    break them, so it is not merely weak."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, generator=g)
    model = LinearClassifier(w, -0.5 * float(w.sum()))  # the boundary passes through the grey image 0.5
    c = torch.tensor([0.03, 0.09, 0.15, 0.21, 0.27, 0.33, 0.39, 0.45]).repeat(2)
    c = c * torch.tensor([1.0, -1.0]).repeat_interleave(8)
    x = (0.5 + c[:, None] * w / w.norm()).view(16, 1, 4, 4)  # exact l2 distance |c|, on the side of c's sign
    y = (c > 0).long()
    noise = GaussianNoise(0.25)
    certified = certified_rows(model, x, y, noise, n=2000)
    assert sum(row.radius > 0 for row in certified) >= 12
    assert all(row.radius <= abs(float(ci)) for row, ci in zip(certified, c))  # the closed form bounds CERTIFY
    eps = [0.05, 0.1, 0.2, 0.3]
    common = dict(attack="PGDL2", sigma=0.25, m=8, n=500, alpha=0.001, options={"steps": 20})
    result = rs_plugins.attack(model, x, y, eps=eps, certified=certified, **common)
    assert result.breaks == []
    assert {row.key for row in result.rows} == {(r.idx, e) for r in certified for e in eps if 0 < e < r.radius}
    assert all(row.predict == certified[row.idx].predict for row in result.rows)  # clean PREDICT agrees
    beyond = rs_plugins.attack(model, x, y, eps=[0.3], **common)
    near = [row for row in beyond.rows if abs(float(c[row.idx])) < 0.14]  # 0.3 - d > 0.15 past the boundary
    assert len(near) == 4 and all(row.adv_predict == 1 - row.label for row in near)


class Recording(nn.Module):
    """A member that counts the non-zero gradients flowing back through its output."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.backward_calls = 0

    def forward(self, x):
        out = self.inner(x)
        if out.requires_grad:
            out.register_hook(self._count)
        return out

    def _count(self, grad):
        self.backward_calls += int(grad.abs().sum() > 0)


@pytest.fixture
def rs_example(monkeypatch):
    monkeypatch.syspath_prepend(str(PLUGIN_DIR))
    monkeypatch.delitem(sys.modules, "rs_example", raising=False)
    import rs_example

    return rs_example


@pytest.mark.parametrize("sigma", [None, 0.25])
def test_a_mixture_is_attacked_end_to_end_through_every_member(rs_example, sigma):
    """The example plugin's ensemble mixer: the attack's gradients reach each member, base and smoothed."""
    host = rs_plugins.Host(entry_points=False, plugins=[gaussian_module, rs_example])
    members = [Recording(tiny_classifier(num_classes=3, seed=s).eval()) for s in range(2)]
    mixed = host.mixer("ensemble", members)
    x, y = torch.rand(4, 1, 8, 8), torch.arange(4) % 3
    smoothing = dict(sigma=sigma, m=2, n=50, alpha=0.1) if sigma else {}
    result = rs_plugins.attack(mixed, x, y, attack="PGD", eps=[0.1], options={"steps": 3}, **smoothing)
    assert len(result.rows) == 4
    assert all(m.backward_calls >= 3 for m in members), [m.backward_calls for m in members]


def test_make_adversary_knows_each_attacks_norm():
    assert make_adversary("pgd").norm == "Linf"
    assert make_adversary("PGDL2").norm == "L2"
    assert make_adversary("cw").bounded is False and make_adversary("cw").norm == "L2"
    assert make_adversary("apgd", "l2").norm == "L2"
    assert make_adversary("pifgsm").eps_parameter == "max_epsilon"
    for name in EOT_ATTACKS:  # every attack listed as able to take --sigma is accepted with it
        assert make_adversary(name.lower(), "L2" if name == "PGDL2" else "Linf", smoothed=True).name == name


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(name="PDG"), r"no attack named 'PDG'\. Did you mean 'PGD'\?"),
        (dict(name="pgd", norm="L2"), r"--norm L2 is not supported by --attack PGD, which attacks Linf only"),
        (dict(name="apgd"), r"--attack APGD needs --norm Linf or --norm L2"),
        (dict(name="pgd", norm="L1"), r"--norm must be one of Linf, L2; got 'L1'"),
        (dict(name="jsma"), r"not an Linf or L2 attack"),
        (dict(name="deepfool", smoothed=True), r"DeepFool cannot attack a smoothed classifier.*PGDL2"),
        (dict(name="pgd", options={"step": 3}), r"--attack-option step: PGD takes no option 'step'\. Did you mean"),
        (dict(name="pgd", options={"step": 3}), r"alpha=0\.0078\d*, steps=10, random_start=True"),
        (dict(name="pgd", options={"eps": 3}), r"--attack-option eps: set it with --eps"),
        (dict(name="autoattack-standard", norm="L2", smoothed=True), r"cannot take --sigma"),
    ],
)
def test_bad_adversaries_are_refused_by_name(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_adversary(**kwargs)


def test_api_checks_its_inputs():
    model = tiny_classifier(num_classes=3).eval()
    x = torch.rand(4, 1, 8, 8)
    with pytest.raises(ValueError, match=r"--eps must be finite numbers >= 0; got -0\.1"):
        rs_plugins.attack(model, x, torch.zeros(4, dtype=torch.long), eps=[-0.1])
    with pytest.raises(ValueError, match=r"--eps must be finite numbers >= 0; got nan"):
        rs_plugins.attack(model, x, torch.zeros(4, dtype=torch.long), eps=[float("nan")])
    with pytest.raises(ValueError, match=r"label 3 of image 1 is outside 0\.\.2"):
        rs_plugins.attack(model, x, torch.tensor([0, 3, 1, 2]), eps=[0.1])
    with pytest.raises(ValueError, match="labels must be 4 integers"):
        rs_plugins.attack(model, x, torch.zeros(3, dtype=torch.long), eps=[0.1])
    with pytest.raises(ValueError, match=r"values in \[0, 1\]"):
        rs_plugins.attack(model, x * 2, torch.zeros(4, dtype=torch.long), eps=[0.1])
    with pytest.raises(ValueError, match="needs a model with at least 10 classes; this one has 3"):
        rs_plugins.attack(model, x, torch.zeros(4, dtype=torch.long), attack="autoattack-standard", norm="L2", eps=1)


# -- the command line -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scripted(tmp_path_factory) -> str:
    """A TorchScript tiny CNN for digits (10 classes), made here: no download, no training."""
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    torch.jit.script(tiny_classifier(num_classes=10).eval()).save(str(path))
    return f"torchscript:{path}"


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_attack_writes_rows_table_plot_summary_and_resumes(scripted, tmp_path, capsys):
    out = tmp_path / "attack.tsv"
    argv = ["attack", "--model", scripted, "--data", "digits", "--limit", "6", "--attack", "pgd", "--eps", "0", "0.1"]
    argv += ["--out", out, "--plot", tmp_path / "curve.png", "--summary", tmp_path / "s.json", *FAST]
    code, stdout, err = run_cli(capsys, *argv)
    assert code == 0, err
    assert "robust acc %" in stdout and "clean acc %" in stdout
    assert out.read_text().splitlines()[0].split("\t") == list(ATTACK_COLUMNS)
    rows = read_attack_results(out)
    assert sorted(r.key for r in rows) == [(i, e) for i in range(6) for e in (0.0, 0.1)]
    assert all(r.adv_predict == r.predict and r.perturbation == 0 for r in rows if r.eps == 0)
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["per_eps"]["0.1"]["images"] == 6 and summary["attack"] == "PGD"
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # A rerun with one more radius adds only its rows; another attack option on the same --out is refused.
    code, _, err = run_cli(capsys, *argv[:10], "0.2", *argv[10:])
    assert code == 0, err
    again = read_attack_results(out)
    assert [r for r in again if r.eps != 0.2] == rows and len(again) == 18  # the first run's rows, kept as they were
    assert [r.key for r in again] == sorted(r.key for r in again)  # the finished file is in (idx, eps) order
    code, _, err = run_cli(capsys, *argv, "--attack-option", "steps=3")
    assert code == 2 and "attack_option" in err and "Use another --out" in err
    with pytest.raises(rs_plugins.RsPluginError, match="read_attack_results"):
        read_results(out)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--attack", "pgd", "--eps", "-1"], "argument --eps: must be a finite number >= 0; got -1"),
        (["--attack", "pgd", "--eps", "inf"], "argument --eps: must be a finite number >= 0; got inf"),
        (["--attack", "pgd", "--eps", "nan"], "argument --eps: must be a finite number >= 0; got nan"),
    ],
)
def test_cli_bad_eps_is_an_argparse_error(scripted, capsys, extra, message):
    with pytest.raises(SystemExit) as exc:
        cli.main(["attack", "--model", scripted, "--data", "digits", *extra])
    assert exc.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--attack", "PDGL2", "--eps", "1"], "Did you mean 'PGDL2'?"),
        (["--attack", "fgsm", "--norm", "L2", "--eps", "1"], "--norm L2 is not supported by --attack FGSM"),
        (["--attack", "cw", "--sigma", "0.25", "--eps", "1"], "CW cannot attack a smoothed classifier"),
        (["--attack", "pgd", "--attack-option", "stepz=3", "--eps", "1"], "Accepted: alpha="),
        (["--attack", "pgdl2", "--certified", "c.tsv", "--eps", "1"], "--certified cross-checks a smoothed"),
    ],
)
def test_cli_bad_attack_requests_exit_2_naming_the_option(scripted, tmp_path, capsys, extra, message):
    argv = ["attack", "--model", scripted, "--data", "digits", "--out", tmp_path / "a.tsv", *extra]
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and message in err
    assert not (tmp_path / "a.tsv").exists()


def test_cli_labels_outside_the_models_classes(tmp_path, capsys):
    data = tmp_path / "data.pt"
    torch.save({"x": torch.rand(3, 1, 8, 8), "y": torch.tensor([0, 1, 7])}, data)
    path = tmp_path / "m.pt"
    torch.jit.script(tiny_classifier(num_classes=3).eval()).save(str(path))
    argv = ["attack", "--model", f"torchscript:{path}", "--data", data, "--attack", "pgd", "--eps", "0.1"]
    code, _, err = run_cli(capsys, *argv, "--out", tmp_path / "a.tsv", *FAST)
    assert code == 2 and "--data: label 7 of image 2 is outside 0..2" in err


def test_cli_attacks_a_mixture_of_two_models(rs_example, scripted, monkeypatch, tmp_path, capsys):
    plugins = [gaussian_module, sources_module, rs_example]
    monkeypatch.setattr(cli.shared, "Host", functools.partial(rs_plugins.Host, entry_points=False, plugins=plugins))
    other = tmp_path / "other.pt"
    torch.jit.script(tiny_classifier(num_classes=10, seed=1).eval()).save(str(other))
    argv = ["attack", "--model", scripted, "--model", f"torchscript:{other}", "--mixer", "ensemble"]
    argv += ["--data", "digits", "--limit", "3", "--attack", "apgd", "--norm", "L2", "--eps", "0.5"]
    code, stdout, err = run_cli(capsys, *argv, "--out", tmp_path / "a.tsv", *FAST)
    assert code == 0, err
    assert len(read_attack_results(tmp_path / "a.tsv")) == 3
    settings = json.loads((tmp_path / "a.tsv.json").read_text())
    assert settings["mixer"] == "ensemble" and len(settings["model"]) == 2


def test_cli_cross_check_with_a_certify_run(scripted, tmp_path, capsys):
    """certify, then attack --certified: only certified images at eps below their radius, towards their class."""
    cert = tmp_path / "cert.tsv"
    common = ["--model", scripted, "--data", "digits", "--limit", "8", "--sigma", "0.25", *FAST]
    code, _, err = run_cli(capsys, "certify", *common, "--n0", "20", "--n", "400", "--alpha", "0.01", "--out", cert)
    assert code == 0, err
    certified = {r.idx: r for r in read_results(cert) if r.predict != -1}
    assert certified, "the tiny model certifies some digit with its constant-ish prediction"
    argv = ["attack", *common, "--attack", "pgdl2", "--eps", "0.05", "0.3", "--certified", cert, "--m", "4"]
    argv += ["--n", "200", "--alpha", "0.01", "--out", tmp_path / "a.tsv", "--summary", tmp_path / "s.json"]
    code, stdout, err = run_cli(capsys, *argv)
    assert code == 0, err
    rows = read_attack_results(tmp_path / "a.tsv")
    assert {r.key for r in rows} == {(i, e) for i, c in certified.items() for e in (0.05, 0.3) if e < c.radius}
    cross = json.loads((tmp_path / "s.json").read_text())["cross_check"]
    record = json.loads((tmp_path / "a.tsv.json").read_text())["provenance"]
    assert record["norm"] == "L2" and record["noise_norm"] == "l2"  # eps's norm, and the smoothing noise's
    assert cross["pairs"] == len(rows) and "breaks" in stdout
    # chance allows alpha_c per image (0.01, read from cert.tsv.json) plus alpha_p per pair (--alpha 0.01)
    images = len({r.idx for r in rows})
    assert cross["expected_breaks_at_most"] == pytest.approx(0.01 * images + 0.01 * len(rows))
    code, _, err = run_cli(capsys, *[a if a != "0.25" else "0.5" for a in argv])
    assert code == 2 and "was certified with --sigma 0.25; this run has 0.5" in err


def test_readme_attack_commands_parse():
    readme = (TESTS.parent / "README.md").read_text()
    commands = re.findall(r"^rs-plugins attack (?:.*\\\n)*.*$", readme, re.M)
    assert len(commands) >= 3
    for command in commands:
        args = cli.build_parser().parse_args(shlex.split(command.replace("\\\n", " "))[1:])
        make_adversary(args.attack, args.norm, smoothed=args.sigma is not None)


# -- resume after SIGKILL ---------------------------------------------------------------------------------------


def attack_command(out: Path) -> list[str]:
    return [
        sys.executable, "-m", "rs_plugins", "attack", "--factory-weights", "--model", "killable_model:build",
        "--data", "digits",
        "--limit", "12", "--batch-size", "4", "--attack", "pgd", "--eps", "0.05", "0.1", "--out", str(out),
        "--device", "cpu", "--no-progress",
    ]  # fmt: skip


def run_attack(out: Path, kill_after: int | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "KILL_AFTER_FORWARDS"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS / "helpers"), env.get("PYTHONPATH", "")]))
    env["OMP_NUM_THREADS"] = "1"
    if kill_after is not None:
        env["KILL_AFTER_FORWARDS"] = str(kill_after)
    return subprocess.run(attack_command(out), env=env, capture_output=True, text=True, timeout=300)


def without_time(path: Path) -> list[tuple]:
    return [(r.idx, r.label, r.eps, r.predict, r.adv_predict, r.perturbation) for r in read_attack_results(path)]


def test_attack_killed_mid_run_resumes_without_losing_or_repeating_a_row(tmp_path, monkeypatch):
    """The model kills its own process (SIGKILL) part-way; a half-written line is added as a crash would leave it.
    The rerun drops that line, keeps every finished row, recomputes the unfinished group exactly and appends the
    rest: the final table, sorted by (idx, eps) at the end, equals an uninterrupted run's (made in this process)
    row for row, with no pair twice."""
    reference, killed = tmp_path / "reference.tsv", tmp_path / "killed.tsv"
    monkeypatch.syspath_prepend(str(TESTS / "helpers"))
    monkeypatch.delenv("KILL_AFTER_FORWARDS", raising=False)
    assert cli.main(attack_command(reference)[3:]) == 0
    done = run_attack(killed, kill_after=30)
    assert done.returncode == -signal.SIGKILL, done.stderr
    partial = without_time(killed)
    assert 0 < len(partial) < 24
    with killed.open("a") as f:
        f.write("11\t5\t0.1")  # killed mid-write
    done = run_attack(killed)
    assert done.returncode == 0, done.stderr
    final = without_time(killed)
    assert set(partial) <= set(final)
    assert len({(r[0], r[2]) for r in final}) == len(final) == 24
    assert final == without_time(reference)


# -- the results file -------------------------------------------------------------------------------------------


def test_attack_rows_round_trip_through_the_results_file(tmp_path):
    path = tmp_path / "a.tsv"
    rows = [AttackRow(3, 1, 8 / 255, 1, 2, 8 / 255, 0.5), AttackRow(3, 1, 0.1, 1, -1, 0.0999, 0.25)]
    with ResultsFile(path, ATTACK_COLUMNS, {"attack": "PGD"}) as results:
        for row in rows:
            results.append(row)
    with ResultsFile(path, ATTACK_COLUMNS, {"attack": "PGD"}) as results:
        assert results.done == {(3, 8 / 255), (3, 0.1)}  # eps read back as the very same float
        assert [r.eps for r in results.rows] == [8 / 255, 0.1]
    assert read_attack_results(path)[1].adv_predict == -1
    assert not read_attack_results(path)[1].robust and read_attack_results(path)[0].correct


# -- AutoAttack, as RobustBench runs it -------------------------------------------------------------------------


class Flat(nn.Module):
    """A linear 10-class model on 8x8 digits: small enough for AutoAttack's standard version in seconds."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(64, 10)

    def forward(self, x):
        return self.linear(x.flatten(1))


@pytest.fixture(scope="module")
def flat_model(tmp_path_factory):
    """Trained here for a few full-batch steps on the digits training split, saved as TorchScript."""
    from rs_plugins.sources.data import load_digits

    train = load_digits("train")
    torch.manual_seed(0)
    model = Flat()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(60):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(train.tensors[0]), train.tensors[1]).backward()
        optimizer.step()
    path = tmp_path_factory.mktemp("flat") / "flat.pt"
    torch.jit.script(model.eval()).save(str(path))
    return path


class PyAutoAttackAsRobustBenchCallsIt:
    """robustbench 1.1.1's benchmark() calls AutoAttack(..., log_path=...) and run_standard_evaluation(..., bs=...),
    the original autoattack's API; pyautoattack 0.2, its declared dependency, has no log_path, calls bs batch_size
    and returns (images, labels), so benchmark() fails as installed. This maps the names and changes nothing else."""

    def __init__(self, model, log_path=None, **kwargs):
        from autoattack import AutoAttack

        self.adversary = AutoAttack(model, **kwargs)

    def run_standard_evaluation(self, x, y, bs=250, state_path=None):
        x_adv, _ = self.adversary.run_standard_evaluation(x, y, batch_size=bs, state_path=state_path)
        return x_adv


def test_autoattack_standard_reproduces_robustbench_benchmark(flat_model, tmp_path, capsys, monkeypatch):
    """robustbench.eval.benchmark (AutoAttack standard, its own data loader replaced by the same 16 test digits) and
    `rs-plugins attack --attack autoattack-standard` report the same clean and robust accuracy.

    L2 only: each standard run costs seconds (Square's 5000 queries on the points that survive), and Linf differs
    only in the norm passed to the same call; `make_adversary`'s tests cover the norm handling."""
    norm, eps = "L2", 0.5
    from rs_plugins.sources.data import load_digits
    from rs_plugins.sources.models import import_robustbench

    import_robustbench()
    import robustbench.eval

    x, y = load_digits("test").tensors
    x, y = x[:16], y[:16]
    monkeypatch.setattr(robustbench.eval, "load_clean_dataset", lambda *args, **kwargs: (x, y))
    monkeypatch.setattr(robustbench.eval, "AutoAttack", PyAutoAttackAsRobustBenchCallsIt)
    model = torch.jit.load(str(flat_model)).eval()
    clean, robust = robustbench.eval.benchmark(
        model, n_examples=16, dataset="cifar10", threat_model=norm, eps=eps, device=torch.device("cpu"), batch_size=16
    )
    capsys.readouterr()
    out = tmp_path / "aa.tsv"
    argv = ["attack", "--model", f"torchscript:{flat_model}", "--data", "digits", "--limit", "16", "--batch-size", "16"]
    argv += ["--attack", "autoattack-standard", "--norm", norm, "--eps", eps, "--out", out, *FAST]
    code, stdout, err = run_cli(capsys, *argv)
    assert code == 0, err
    rows = read_attack_results(out)
    assert sum(r.correct for r in rows) / 16 == pytest.approx(clean)
    assert sum(r.robust for r in rows) / 16 == pytest.approx(robust)
    assert 0 < robust < clean  # a comparison that can fail: some but not all points are broken
    assert all(r.perturbation <= eps * (1 + 1e-4) for r in rows)


def test_cli_attack_refuses_a_model_with_non_finite_logits(tmp_path, capsys):
    class NaNModel(torch.nn.Module):
        def forward(self, x):
            return torch.full((len(x), 10), float("nan")) + 0 * x.flatten(1).sum(1, keepdim=True)

    path = tmp_path / "nan.pt"
    torch.jit.script(NaNModel()).save(str(path))
    argv = ["attack", "--model", f"torchscript:{path}", "--data", "digits", "--limit", "2", "--attack", "pgd"]
    code, _, err = run_cli(capsys, *argv, "--eps", "0.1", "--out", tmp_path / "a.tsv", *FAST)
    assert code == 2 and "non-finite logits" in err


def test_cli_attack_runs_the_model_as_asked_and_records_it(scripted, tmp_path, capsys):
    out = tmp_path / "bf16.tsv"
    argv = ["attack", "--model", scripted, "--data", "digits", "--limit", "4", "--attack", "pgd", "--eps", "0.1"]
    code, _, err = run_cli(capsys, *argv, "--precision", "bf16", "--channels-last", "--out", out, *FAST)
    assert code == 0, err
    sidecar = json.loads((tmp_path / "bf16.tsv.json").read_text())
    assert sidecar["precision"] == "bf16" and sidecar["channels_last"] is True
    assert sidecar["provenance"]["precision"] == "bf16"
    assert sidecar["provenance"]["norm"] == "Linf" and "noise_norm" not in sidecar["provenance"]  # of eps, no noise
    code, _, err = run_cli(capsys, *argv, "--out", out, *FAST)  # fp32 onto a bf16 file: other rows, refused
    assert code == 2 and "precision=bf16" in err


ATTACK_COST = re.compile(
    r"^attack PGDL2: (\d+) rows to do \((\d+) radi(?:us|i) per image\) in groups of up to (\d+) images"
    r"(?:; smoothed: (\d+) noise draws per image in each attack step, PREDICT n = (\d+) on the clean image and on "
    r"each attacked one \(([\d.]+) passes of (\d+) each\))?; the first group took ([\d.e+-]+) (s|min|h) per row: "
    r"about ([\d.e+-]+) (s|min|h) for the (\d+) rows on cpu$",
    re.M,
)


@pytest.mark.parametrize("smoothed", [False, True])
def test_attack_says_what_a_row_costs(tmp_path, capsys, smoothed):
    """One line after the first group: the rows to do follow from --limit and --eps, the groups from --batch-size
    (divided by --m when smoothed), the PREDICT passes from --n and --batch-size."""
    argv = ["attack", "--factory-weights", "--model", "rs_plugins.nets:SmallCNN", "--model-kwargs", '{"width": 8}',
            "--data", "digits", "--attack", "pgdl2", "--eps", "0.25", "0.5", "--attack-option", "steps=2",
            "--limit", "5", "--no-progress", "--device", "cpu", "--out", str(tmp_path / "a.tsv")]  # fmt: skip
    argv += ["--sigma", "0.25", "--m", "4", "--n", "250", "--batch-size", "100"] if smoothed else ["--batch-size", "2"]
    torch.manual_seed(0)
    assert cli.main(argv) == 0
    found = ATTACK_COST.search(capsys.readouterr().out)
    assert found
    assert (int(found.group(1)), int(found.group(2)), int(found.group(12))) == (10, 2, 10)
    assert int(found.group(3)) == (100 // 4 if smoothed else 2)
    if smoothed:
        assert (int(found.group(4)), int(found.group(5)), int(found.group(7))) == (4, 250, 100)
        assert float(found.group(6)) == 3  # ceil(250 / 100)
    else:
        assert found.group(4) is None
    scale = {"s": 1, "min": 60, "h": 3600}
    per_row, total = float(found.group(8)) * scale[found.group(9)], float(found.group(10)) * scale[found.group(11)]
    assert total == pytest.approx(10 * per_row, rel=0.1)
