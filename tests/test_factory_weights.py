"""A factory model without a checkpoint runs only when the user says its factory's weights are meant (issue 25,
item 5; issue 31, item 4): ``--factory-weights`` on the command line (``--random-weights``, its former name, still
works) and ``factory_weights=True`` (or ``random_weights=True``) in Python, where the docs' own example used to
certify an untrained SmallCNN without a word."""

from __future__ import annotations

import pytest
import torch

import rs_plugins as rs
from rs_plugins import cli
from rs_plugins.errors import SourceError
from rs_plugins.nets import SmallCNN

FACTORY = "rs_plugins.nets:SmallCNN"


def test_the_python_api_refuses_a_factory_without_weights():
    with pytest.raises(SourceError) as info:
        rs.Host().load_model(FACTORY)
    message = str(info.value)
    assert "has no --checkpoint, so it would run with the weights its factory builds" in message
    assert "ModelRequest(source, checkpoint=FILE) or host.load_model(source, factory_weights=True)" in message


@pytest.mark.parametrize(
    "load",
    [
        lambda host: host.load_model(FACTORY, factory_weights=True),
        lambda host: host.load_model(FACTORY, random_weights=True),  # the name issue 31 used
        lambda host: host.load_model(rs.ModelRequest(FACTORY, factory_weights=True)),
    ],
    ids=["factory_weights", "random_weights", "ModelRequest"],
)
def test_saying_so_loads_the_factorys_weights(load):
    torch.manual_seed(0)
    model = load(rs.Host())
    torch.manual_seed(0)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), SmallCNN().state_dict().values()))


def test_a_checkpoint_needs_no_flag(tmp_path):
    torch.manual_seed(3)
    torch.save(SmallCNN().state_dict(), tmp_path / "model.pt")
    model = rs.Host().load_model(rs.ModelRequest(FACTORY, checkpoint=str(tmp_path / "model.pt")))
    assert torch.equal(model.state_dict()["head.weight"], torch.load(tmp_path / "model.pt")["head.weight"])


@pytest.mark.parametrize("flag", ["--factory-weights", "--random-weights"])
def test_the_flag_and_its_former_name(flag, tmp_path, capsys):
    argv = ["predict", "--model", FACTORY, "--model-kwargs", '{"width": 4}', "--data", "digits", "--sigma", "0.25",
            "--n", "20", "--limit", "1", "--out", str(tmp_path / "p.tsv"), "--device", "cpu", "--no-progress"]
    assert cli.main(argv) == 2
    assert "--factory-weights to use the factory's weights as they are" in capsys.readouterr().err
    assert cli.main([*argv, flag]) == 0


def test_train_denoiser_refuses_an_untrained_frozen_classifier(tmp_path, capsys):
    argv = ["train-denoiser", "--model", FACTORY, "--objective", "stability", "--data", "digits", "--sigma", "0.25",
            "--epochs", "1", "--checkpoint-dir", str(tmp_path / "d"), "--device", "cpu", "--no-progress"]
    assert cli.main(argv) == 2
    assert "has no --checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
