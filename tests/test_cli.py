"""The ``rs-plugins`` command line, called in-process: listing, train -> certify -> report, resume, bad input, demo.

Budgets are tiny (digits, SmallCNN of width 8, n=200), so the numbers are not meaningful; what is checked is
the contract: file formats, what is recomputed on resume, reproducibility, and that every mistake a user can
make ends with exit code 2 and a message naming the option at fault.
"""

from __future__ import annotations

import json
import shlex
import sys

import pytest
import torch

from rs_plugins import cli
from rs_plugins.cli import build_parser, main, train_config

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CERTIFY_HEADER = "idx\tlabel\tpredict\tradius\tcorrect\ttime\tsamples"
PREDICT_HEADER = "idx\tlabel\tpredict\tcorrect\ttime"
SMALL_MODEL = ["--model", "rs_plugins.nets:SmallCNN", "--model-kwargs", '{"width": 8}']
FAST = ["--device", "cpu", "--no-progress"]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of ``rs-plugins argv``."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def argparse_error(capsys, *argv: str) -> str:
    """stderr of an ``rs-plugins`` call that argparse must reject with exit status 2."""
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    assert exc.value.code == 2
    return capsys.readouterr().err


def read_tsv(path) -> tuple[str, list[dict[str, str]]]:
    """Header line and rows (as strings, keyed by column) of a results TSV."""
    lines = path.read_text(encoding="utf-8").splitlines()
    columns = lines[0].split("\t")
    return lines[0], [dict(zip(columns, line.split("\t"), strict=True)) for line in lines[1:]]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A SmallCNN(width=8) trained for 3 quick epochs on digits by the ``train`` command."""
    directory = tmp_path_factory.mktemp("train")
    argv = [
        "train",
        *SMALL_MODEL,
        "--data",
        "digits",
        "--sigma",
        "0.25",
        "--epochs",
        "3",
        "--batch-size",
        "32",
        "--checkpoint-dir",
        directory,
        *FAST,
    ]
    assert main([str(a) for a in argv]) == 0
    return directory / "model.pt"


def test_train_depends_on_its_seed_alone(tmp_path):
    """Two in-process runs with the same --seed agree bit for bit, whatever used the global RNG in between."""
    argv = ["train", *SMALL_MODEL, "--data", "digits", "--sigma", "0.25", "--epochs", "1", "--batch-size", "128"]
    weights = []
    for run, seed in enumerate([3, 3, 4]):
        torch.rand(run + 1)  # moves the global generator differently before each run
        directory = tmp_path / f"run{run}"
        assert main([*argv, "--seed", str(seed), "--checkpoint-dir", str(directory), *FAST]) == 0
        weights.append(torch.load(directory / "model.pt", weights_only=True))
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])


def certify_argv(checkpoint, out, *extra) -> list[str]:
    return [
        "certify",
        *SMALL_MODEL,
        "--checkpoint",
        checkpoint,
        "--data",
        "digits",
        "--sigma",
        "0.25",
        "--n0",
        "10",
        "--n",
        "200",
        "--out",
        out,
        *FAST,
        *extra,
    ]


# -- plugins ------------------------------------------------------------------------------------------------


def test_plugins_json_lists_the_builtin_components(capsys):
    code, out, _ = run_cli(capsys, "plugins", "--json")
    assert code == 0
    listing = json.loads(out)
    assert set(listing) >= {"plugins", "components"}
    distribution = {p["name"]: p["distribution"] for p in listing["plugins"]}
    for component in listing["components"]:
        assert component["kind"] in {"noise", "loss", "mixer", "certifier", "denoiser"}
        for key in ("name", "summary", "reference"):
            assert isinstance(component[key], str) and component[key], (key, component)
    builtin = {(c["kind"], c["name"]) for c in listing["components"] if distribution[c["plugin"]] == "rs-plugins"}
    assert {("noise", "gaussian"), ("loss", "gaussian"), ("certifier", "cohen"), ("denoiser", "diffusion")} <= builtin
    techniques = {"consistency", "smoothmix", "smoothadv", "macer", "adre"}
    assert {("loss", name) for name in techniques} <= builtin
    options = {c["name"]: c["options"] for c in listing["components"] if c["kind"] == "loss"}
    assert options["consistency"]["lbd"] == 10 and options["macer"]["k"] == 16  # the papers' defaults, shown
    # every component listed at top level is also listed under its plugin
    nested = {(p["name"], c["kind"], c["name"]) for p in listing["plugins"] for c in p["components"]}
    assert {(c["plugin"], c["kind"], c["name"]) for c in listing["components"]} == nested


def test_plugins_text_shows_each_plugins_hooks(capsys):
    _, out, _ = run_cli(capsys, "plugins", "--json")
    plugins = json.loads(out)["plugins"]
    code, text, _ = run_cli(capsys, "plugins")
    assert code == 0
    assert any(p["hooks"] for p in plugins)
    for plugin in plugins:
        assert plugin["name"] in text
        if plugin["hooks"]:
            assert f"hooks: {', '.join(plugin['hooks'])}" in text
        for component in plugin["components"]:
            assert component["summary"] in text


# -- certify, predict, report -------------------------------------------------------------------------------


def test_certify_end_to_end(capsys, tmp_path, checkpoint):
    out, plot, summary = tmp_path / "certify.tsv", tmp_path / "curve.png", tmp_path / "summary.json"
    argv = certify_argv(checkpoint, out, "--every", "7", "--limit", "8", "--plot", plot, "--summary", summary)
    code, stdout, _ = run_cli(capsys, *argv)
    assert code == 0

    header, rows = read_tsv(out)
    assert header == CERTIFY_HEADER
    assert [int(r["idx"]) for r in rows] == [7 * k for k in range(8)]
    for r in rows:
        predict, label, radius = int(r["predict"]), int(r["label"]), float(r["radius"])
        assert -1 <= predict <= 9 and 0 <= label <= 9
        assert (radius == 0) == (predict == -1), r
        assert radius >= 0
        assert r["correct"] == str(int(predict == label)), r
        assert r["samples"] == "210", r  # n0 + n
    acr = sum(float(r["radius"]) * int(r["correct"]) for r in rows) / len(rows)
    assert acr > 0, "three epochs on digits should certify at least one image correctly"

    assert "ACR" in stdout
    assert plot.read_bytes().startswith(PNG_SIGNATURE)
    written = json.loads(summary.read_text())
    assert written["images"] == len(rows)
    assert written["abstained"] == sum(r["predict"] == "-1" for r in rows)
    assert written["acr"] == acr  # the TSV holds each radius exactly (repr), so a re-read gives the same ACR
    assert written["mean_samples"] == 210 and written["norm"] == "l2" and written["certifier"] == "cohen"
    sidecar = json.loads((out.parent / (out.name + ".json")).read_text())  # what a resumed run is checked against
    record = sidecar["provenance"]
    assert record["norm"] == "l2" and record["radius"] == "rs_plugins.builtin.gaussian.GaussianNoise.radius"
    assert record["images"] == 8  # the planned count, which report compares with the rows

    # report on the same file prints and writes the ACR certify did, to the last bit
    again = tmp_path / "again.json"
    code, report_out, _ = run_cli(capsys, "report", out, "--summary", again)
    assert code == 0 and json.loads(again.read_text())["acr"] == written["acr"]
    acr_line = next(line for line in stdout.splitlines() if line.startswith("ACR"))
    assert acr_line in report_out.splitlines()


def test_certify_resumes_without_recomputing_and_refuses_other_settings(capsys, tmp_path, checkpoint):
    out = tmp_path / "certify.tsv"
    assert run_cli(capsys, *certify_argv(checkpoint, out, "--limit", "3"))[0] == 0
    first = out.read_bytes().splitlines(keepends=True)
    assert len(first) == 1 + 3

    assert run_cli(capsys, *certify_argv(checkpoint, out, "--limit", "6"))[0] == 0
    second = out.read_bytes().splitlines(keepends=True)
    assert second[:4] == first  # the same bytes, time column included: those images were not certified again
    _, rows = read_tsv(out)
    assert [int(r["idx"]) for r in rows] == list(range(6))

    code, _, err = run_cli(capsys, *certify_argv(checkpoint, out, "--limit", "6", "--sigma", "0.5"))
    assert code == 2
    assert err.startswith("rs-plugins: error:")
    assert "sigma=0.25" in err and "sigma=0.5" in err
    assert out.read_bytes().splitlines(keepends=True) == second  # the refused run wrote nothing

    # Per-image seeding: a fresh run of all six at once gives the resumed file's results.
    fresh = tmp_path / "fresh.tsv"
    assert run_cli(capsys, *certify_argv(checkpoint, fresh, "--limit", "6"))[0] == 0
    _, fresh_rows = read_tsv(fresh)
    columns = ("idx", "predict", "radius")
    assert [[r[c] for c in columns] for r in fresh_rows] == [[r[c] for c in columns] for r in rows]


def test_certify_resume_refuses_other_model_kwargs(capsys, tmp_path):
    out = tmp_path / "certify.tsv"
    base = ["certify", "--model", "rs_plugins.nets:SmallCNN", "--data", "digits", "--sigma", "0.25", "--random-weights"]
    base += ["--n0", "10", "--n", "100", "--limit", "1", "--out", out, *FAST]
    assert run_cli(capsys, *base, "--model-kwargs", '{"width": 8}')[0] == 0
    before = out.read_bytes()
    code, _, err = run_cli(capsys, *base, "--model-kwargs", '{"width": 4}', "--limit", "2")
    assert code == 2
    assert "model_kwargs={'width': 8}" in err and "model_kwargs={'width': 4}" in err
    assert out.read_bytes() == before


def test_predict_writes_its_tsv(capsys, tmp_path, checkpoint):
    out = tmp_path / "predict.tsv"
    argv = certify_argv(checkpoint, out, "--start", "10", "--limit", "5")
    argv[0] = "predict"
    del argv[argv.index("--n0") : argv.index("--n0") + 2]  # PREDICT has no selection samples
    code, stdout, _ = run_cli(capsys, *argv)
    assert code == 0
    header, rows = read_tsv(out)
    assert header == PREDICT_HEADER
    assert [int(r["idx"]) for r in rows] == list(range(10, 15))
    for r in rows:
        assert int(r["predict"]) in range(-1, 10)
        assert r["correct"] == str(int(r["predict"] == r["label"]))
    accuracy = 100 * sum(r["correct"] == "1" for r in rows) / len(rows)
    abstained = sum(r["predict"] == "-1" for r in rows)
    assert f"accuracy {accuracy:.1f}%, abstained {abstained} of 5" in stdout
    assert "ACR" not in stdout  # PREDICT certifies no radius
    record = json.loads((tmp_path / "predict.tsv.json").read_text())["provenance"]
    assert record["norm"] == "l2" and "radius" not in record and record["images"] == 5


def test_certify_plot_names_data_and_model_and_marks_the_largest_radius(capsys, tmp_path, checkpoint, monkeypatch):
    from scipy.stats import norm

    from rs_plugins.cli import certify

    drawn = {}
    monkeypatch.setattr(certify, "plot_certified_accuracy", lambda curves, path, **kw: drawn.update(kw))
    argv = certify_argv(checkpoint, tmp_path / "c.tsv", "--limit", "2", "--alpha", "0.01", "--plot", tmp_path / "c.png")
    assert run_cli(capsys, *argv)[0] == 0
    assert drawn["title"].startswith("digits test, rs_plugins.nets:SmallCNN\ncohen, N = 200, α = 0.01, 2 images")
    assert drawn["largest"] == {"gaussian σ = 0.25": pytest.approx(0.25 * norm.ppf(0.01 ** (1 / 200)))}


def test_report_prints_the_table_and_plots(capsys, tmp_path):
    """A file without the samples column (the paper repos', ours before it) still reads; samples are unknown."""
    results = tmp_path / "results.tsv"
    results.write_text(
        "idx\tlabel\tpredict\tradius\tcorrect\ttime\n"
        "0\t3\t3\t0.7000\t1\t0:00:01.500000\n"
        "1\t8\t1\t0.9000\t0\t0:00:01\n"
        "2\t0\t-1\t0.0000\t0\t0:00:00.500000\n"
        "3\t6\t6\t0.3000\t1\t0:00:02\n"
        "4\t1\t1\t0.1000\t1\t0:00:01\n",
        encoding="utf-8",
    )
    _, rows = read_tsv(results)
    acr = sum(float(r["radius"]) * int(r["correct"]) for r in rows) / len(rows)
    plot, summary = tmp_path / "report.png", tmp_path / "report.json"
    code, out, _ = run_cli(capsys, "report", results, "--plot", plot, "--summary", summary)
    assert code == 0
    assert str(results) in out
    assert f"ACR: {acr:.3f}" in out
    assert "images: 5 (abstained: 1)" in out
    assert plot.read_bytes().startswith(PNG_SIGNATURE)
    assert json.loads(summary.read_text())["acr"] == pytest.approx(acr)
    assert json.loads(summary.read_text())["mean_samples"] is None
    assert "(l2 radius)" in out and "samples per image" not in out

    code, _, err = run_cli(capsys, "report", tmp_path / "missing.tsv")
    assert code == 2
    assert "missing.tsv" in err


# -- bad input ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("--sigma", "0", "must be a finite number > 0"),
        ("--sigma", "-1", "must be a finite number > 0"),
        ("--alpha", "0", "must be a finite number in (0, 1)"),
        ("--alpha", "1.5", "must be a finite number in (0, 1)"),
    ],
)
def test_out_of_range_numbers_are_argparse_errors(capsys, tmp_path, flag, value, expected):
    argv = ["certify", *SMALL_MODEL, "--data", "digits", "--sigma", "0.25", "--out", tmp_path / "x.tsv"]
    err = argparse_error(capsys, *argv, flag, value)
    assert f"argument {flag}: {expected}; got {value}" in err
    assert not (tmp_path / "x.tsv").exists()


def test_missing_required_option_is_an_argparse_error(capsys):
    err = argparse_error(capsys, "certify", *SMALL_MODEL, "--data", "digits")
    assert "--sigma" in err


def base_argv(tmp_path) -> list[str]:
    """A valid certify command of one image with an untrained model; tests add the one wrong option."""
    return [
        "certify",
        "--random-weights",
        "--data",
        "digits",
        "--sigma",
        "0.25",
        "--n0",
        "10",
        "--n",
        "100",
        "--limit",
        "1",
        "--out",
        str(tmp_path / "x.tsv"),
        *FAST,
    ]


def user_error(capsys, *argv) -> str:
    """stderr of an ``rs-plugins`` call that must fail with a one-line error and exit code 2."""
    code, _, err = run_cli(capsys, *argv)
    assert code == 2
    assert err.startswith("rs-plugins: error: ")
    return err


def test_n0_above_n(capsys, tmp_path):
    err = user_error(capsys, *base_argv(tmp_path), *SMALL_MODEL, "--n0", "500", "--n", "100")
    assert "--n0 (500)" in err and "--n (100)" in err


def test_unknown_noise_suggests_the_close_name(capsys, tmp_path):
    err = user_error(capsys, *base_argv(tmp_path), *SMALL_MODEL, "--noise", "guassian")
    assert "'guassian'" in err and "Did you mean 'gaussian'?" in err


def test_unknown_certifier_suggests_the_close_name(capsys, tmp_path):
    err = user_error(capsys, *base_argv(tmp_path), *SMALL_MODEL, "--certifier", "cohne")
    assert "'cohne'" in err and "Did you mean 'cohen'?" in err


def test_missing_checkpoint(capsys, tmp_path):
    missing = tmp_path / "missing.pt"
    err = user_error(capsys, *base_argv(tmp_path), *SMALL_MODEL, "--checkpoint", missing)
    assert "--checkpoint" in err and str(missing) in err


@pytest.mark.parametrize("command", ["certify", "predict", "attack"])
def test_an_untrained_factory_model_is_refused_unless_random_weights(capsys, tmp_path, command):
    """Issue 21: a factory without --checkpoint used to certify random weights and exit 0 with a plausible table."""
    argv = [command, *SMALL_MODEL, "--data", "digits", "--limit", "1", "--out", tmp_path / "o.tsv", *FAST]
    argv += ["--sigma", "0.25", "--n", "20"] + (["--n0", "10"] if command == "certify" else [])
    if command == "attack":
        argv = [a for a in argv if a not in ("--sigma", "0.25", "--n", "20")] + ["--attack", "pgd", "--eps", "0"]
    err = user_error(capsys, *argv)
    assert "--random-weights" in err and "--checkpoint" in err and "random initial weights" in err
    assert not (tmp_path / "o.tsv").exists()
    assert run_cli(capsys, *argv, "--random-weights")[0] == 0


def test_a_built_in_net_refuses_data_of_another_shape(capsys, tmp_path):
    """cifar_resnet110 (3x32x32) on 1x8x8 digits used to run; now both shapes are named before any work."""
    argv = ["certify", "--model", "rs_plugins.nets:cifar_resnet110", "--random-weights", "--data", "digits"]
    err = user_error(capsys, *argv, "--sigma", "0.25", "--limit", "1", "--out", tmp_path / "o.tsv", *FAST)
    assert "1x8x8" in err and "3x32x32" in err and "rs_plugins.nets:cifar_resnet110" in err


def test_unknown_data_form_lists_the_accepted_forms(capsys, tmp_path):
    argv = base_argv(tmp_path)
    argv[argv.index("digits")] = "nonsense"
    err = user_error(capsys, *argv, *SMALL_MODEL)
    assert "--data 'nonsense'" in err
    for form in ("digits", "cifar10[:<root>]", "<file>.pt", "<file>.npz"):
        assert form in err


def test_unknown_model_form_lists_the_accepted_forms(capsys, tmp_path):
    err = user_error(capsys, *base_argv(tmp_path), "--model", "nonsense")
    assert "--model 'nonsense'" in err
    for form in ("robustbench:<name>", "package.module:factory", "torchscript:<file>", "<file>.pt2"):
        assert form in err


def test_tensor_file_with_images_outside_unit_range(capsys, tmp_path):
    path = tmp_path / "images.pt"
    torch.save({"x": torch.full((4, 1, 8, 8), 2.0), "y": torch.zeros(4, dtype=torch.long)}, path)
    argv = base_argv(tmp_path)
    argv[argv.index("digits")] = str(path)
    err = user_error(capsys, *argv, *SMALL_MODEL)
    assert "--data" in err and "[0, 1]" in err


def test_model_with_wrong_output_shape(capsys, tmp_path, monkeypatch):
    (tmp_path / "rs_cli_test_badshape.py").write_text(
        "from torch import nn\n"
        "class OneScore(nn.Module):\n"
        "    def forward(self, x):\n"
        "        return x.flatten(1).sum(1)  # (batch,) instead of (batch, num_classes)\n"
        "def factory():\n"
        "    return OneScore()\n",
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "rs_cli_test_badshape", raising=False)
    err = user_error(capsys, *base_argv(tmp_path), "--model", "rs_cli_test_badshape:factory")
    assert "logits of shape (batch, num_classes)" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda(capsys, tmp_path):
    err = user_error(capsys, *base_argv(tmp_path), *SMALL_MODEL, "--device", "cuda")  # the last --device wins
    assert "--device cuda" in err


def test_two_models_need_a_mixer(capsys, tmp_path):
    err = user_error(capsys, *base_argv(tmp_path), *SMALL_MODEL, "--model", "rs_plugins.nets:SmallCNN")
    assert "2 --model given" in err and "--mixer" in err


# -- demo -----------------------------------------------------------------------------------------------------


def test_demo_help_lists_its_options(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for option in ("--out-dir", "--sigma", "--epochs", "--n", "--every", "--device", "--seed"):
        assert option in out


def test_demo_trains_certifies_and_shows_the_commands(capsys, tmp_path):
    out_dir = tmp_path / "demo"
    argv = ["demo", "--epochs", "2", "--n", "200", "--every", "40", "--device", "cpu", "--out-dir", out_dir]
    code, out, _ = run_cli(capsys, *argv)
    assert code == 0
    for name in ("certify.tsv", "certified_accuracy.png", "summary.json", "checkpoints/model.pt"):
        assert (out_dir / name).is_file(), name
    assert (out_dir / "certified_accuracy.png").read_bytes().startswith(PNG_SIGNATURE)
    _, rows = read_tsv(out_dir / "certify.tsv")
    assert [int(r["idx"]) for r in rows] == list(range(0, 360, 40))
    assert json.loads((out_dir / "summary.json").read_text())["images"] == len(rows)

    commands = [line for line in out.splitlines() if line.startswith("$ rs-plugins ")]
    assert [c.split()[2] for c in commands] == ["train", "certify"]
    train, certify = (shlex.split(c)[2:] for c in commands)
    assert build_parser().parse_args(train).epochs == 2
    assert build_parser().parse_args(certify).n == 200

    # The printed certify command is the one that ran: rerunning it resumes a finished file and changes nothing.
    before = (out_dir / "certify.tsv").read_bytes()
    assert run_cli(capsys, *certify)[0] == 0
    assert (out_dir / "certify.tsv").read_bytes() == before


def test_demo_with_fewer_samples_than_the_default_n0(capsys, monkeypatch):
    """``demo --n 50`` must not hand certify its default --n0 100, which exceeds --n."""
    ran = []
    monkeypatch.setattr(cli.plugins, "_run_step", lambda argv: ran.append(build_parser().parse_args(argv)) or 0)
    assert cli.cmd_demo(build_parser().parse_args(["demo", "--n", "50", "--out-dir", "unused"])) == 0
    capsys.readouterr()
    certify = next(args for args in ran if args.command == "certify")
    assert certify.n == 50
    assert certify.n0 <= certify.n


def test_train_recipes_and_explicit_flags():
    """A recipe sets the whole schedule; an explicit flag wins over it; the default recipe is the CIFAR-10 harness."""
    base = ["train", *SMALL_MODEL, "--data", "digits", "--sigma", "0.25"]
    default = train_config(build_parser().parse_args(base))
    assert (default.epochs, default.lr, default.lr_step, default.batch_size) == (150, 0.1, 50, 256)
    macer = train_config(build_parser().parse_args([*base, "--recipe", "macer", "--lr", "0.02"]))
    assert (macer.epochs, macer.batch_size, macer.weight_decay, macer.lr_milestones) == (440, 64, 5e-4, (200, 400))
    assert macer.lr == 0.02
    mnist = train_config(build_parser().parse_args([*base, "--recipe", "mnist", "--precision", "bf16"]))
    assert (mnist.epochs, mnist.lr, mnist.lr_step, mnist.precision) == (90, 0.01, 30, "bf16")


def test_train_refuses_to_resume_with_another_technique(tmp_path, capsys):
    argv = ["train", *SMALL_MODEL, "--data", "digits", "--sigma", "0.25", "--epochs", "1", "--batch-size", "128"]
    argv += ["--checkpoint-dir", str(tmp_path), *FAST]
    assert main(argv) == 0
    capsys.readouterr()
    assert main([*argv, "--loss", "consistency", "--loss-option", "lbd=20"]) == 2
    error = capsys.readouterr().err
    assert "'gaussian' -> 'consistency'" in error and "--checkpoint-dir" in error


def test_a_technique_option_error_names_the_option(tmp_path, capsys):
    argv = ["train", *SMALL_MODEL, "--data", "digits", "--sigma", "0.25", "--loss", "consistency"]
    assert main([*argv, "--loss-option", "variant=bogus", "--checkpoint-dir", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert "consistency" in error and "variant must be one of default, xent, kl, mse" in error


def test_certify_progress_counts_samples_per_pass_with_images_and_cost(capsys, tmp_path):
    """Issue 21: the bar counts samples (n0 + n per image), moves per forward pass, and says the cost of a row."""
    argv = ["certify", *SMALL_MODEL, "--random-weights", "--data", "digits", "--sigma", "0.25", "--n0", "10"]
    argv += ["--n", "50", "--batch-size", "20", "--limit", "2", "--out", tmp_path / "c.tsv", "--device", "cpu"]
    code, _, err = run_cli(capsys, *argv)
    assert code == 0
    assert "120/120" in err and "sample" in err and "2/2 img" in err and "s/img" in err


def test_demo_help_plugins_forms_and_demo_messages_speak_of_the_demo_options(capsys, tmp_path):
    """Issue 21 items 10 and 11: demo --help has text, plugins lists the --model/--data forms, and demo's
    messages name its own --out-dir, not the --checkpoint-dir it does not have."""
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = capsys.readouterr().out
    assert "Runs the two commands" in text and "CERTIFY's estimation samples" in text
    code, listing, _ = run_cli(capsys, "plugins")
    assert code == 0
    assert "package.module:factory" in listing and "cifar10[:<root>]" in listing
    demo = ["demo", "--epochs", "1", "--n", "20", "--every", "200", "--device", "cpu", "--out-dir", tmp_path]
    assert run_cli(capsys, *demo)[0] == 0
    code, _, err = run_cli(capsys, *demo, "--sigma", "0.5")
    assert code == 2 and "another --out-dir" in err and "another --checkpoint-dir" not in err


def test_missing_torchvision_data_does_not_advise_download_true():
    from rs_plugins.sources.data import _not_on_disk

    err = RuntimeError("Dataset not found or corrupted. You can use download=True to download it")
    message = str(_not_on_disk("cifar10", "data", "data/cifar-10-batches-py", err, "run X"))
    assert "download=True to download it" not in message and "Dataset not found or corrupted" in message


def test_a_cli_row_is_reproduced_from_python_as_the_docs_say(capsys, tmp_path, checkpoint):
    """Issue 21 item 11 (docs/index.md): image_generator(seed, idx) and the CLI's sampling settings give the row."""
    import rs_plugins as rs
    from rs_plugins.certify.runner import image_generator

    out = tmp_path / "c.tsv"
    assert run_cli(capsys, *certify_argv(checkpoint, out, "--start", "7", "--limit", "2", "--seed", "3"))[0] == 0
    _, rows = read_tsv(out)
    host = rs.Host()
    model = host.load_model(rs.ModelRequest("rs_plugins.nets:SmallCNN", checkpoint=str(checkpoint),
                                            kwargs={"width": 8}))  # fmt: skip
    data = host.load_data(rs.DataRequest("digits", "test"))
    smoothed = rs.SmoothedClassifier(model, host.noise("gaussian", sigma=0.25), host.certifier("cohen"))
    for row in rows:
        i = int(row["idx"])
        cert = smoothed.certify(data[i][0], n0=10, n=200, alpha=0.001, batch_size=1000,
                                generator=image_generator(3, i, "cpu"))  # fmt: skip
        assert (cert.prediction, f"{cert.radius:.4}") == (int(row["predict"]), f"{float(row['radius']):.4}")
