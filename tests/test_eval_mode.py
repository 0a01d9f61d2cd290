"""Every sampling and attacking entry point runs the model in eval mode and hands it back as it found it (issue 25).

``confidence_dataset`` (CAT-RS's p_b) never switched to eval mode: the CLI's loaders return eval-mode models, but a
Python caller passing a model in train mode got BatchNorm batch statistics (p_b off by up to 0.51 on a test model)
and its running statistics updated. Each entry point here gets a BatchNorm model in train mode and must give what
the same model in eval mode gives, leave its running statistics alone, and leave it in train mode.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import rs_plugins as rs
from rs_plugins.builtin.gaussian import GaussianNoise
from rs_plugins.certify.runner import certify_dataset, confidence_dataset, predict_dataset
from rs_plugins.results.files import CERTIFY_COLUMNS, CONFIDENCE_COLUMNS, PREDICT_COLUMNS, ResultsFile
from rs_plugins.types import Certificate


class BatchNormNet(nn.Module):
    """A linear classifier behind a BatchNorm whose running statistics are far from any batch's: train mode (batch
    statistics) and eval mode (running ones) disagree on most inputs."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.norm = nn.BatchNorm1d(64)
        self.linear = nn.Linear(64, 10)
        with torch.no_grad():
            self.norm.running_mean.uniform_(0.3, 0.7)
            self.norm.running_var.uniform_(0.001, 0.01)

    def forward(self, x):
        return self.linear(self.norm(x.flatten(1)))


class PlainCertifier:
    """A plugin certifier that counts with ``sample_counts`` and never sets the model's mode itself."""

    def certify(self, model, x, noise, *, n0, n, alpha, batch_size, generator=None):
        from rs_plugins.certify.sampling import sample_counts

        counts = sample_counts(model, x, noise, n, batch_size=batch_size, generator=generator)
        return [Certificate(int(c.argmax()), 0.0, float(c.max()) / n) for c in counts]


def data(count: int = 6) -> TensorDataset:
    return TensorDataset(torch.rand(count, 1, 8, 8, generator=torch.Generator().manual_seed(1)), torch.arange(count))


def generators(count: int = 4):
    return [torch.Generator().manual_seed(i) for i in range(count)]


NOISE = GaussianNoise(0.25)
SAMPLING = dict(n0=10, n=40, alpha=0.01, batch_size=20)


def run_confidence(model, tmp_path):
    with ResultsFile(tmp_path / "votes.tsv", CONFIDENCE_COLUMNS) as results:
        return [r.counts for r in confidence_dataset(model, data(), NOISE, results, indices=range(6), n=40,
                                                     batch_size=20, progress=False)]  # fmt: skip


def run_certify(certifier):
    def run(model, tmp_path):
        with ResultsFile(tmp_path / "c.tsv", CERTIFY_COLUMNS) as results:
            rows = certify_dataset(model, data(), NOISE, certifier, results, indices=range(6), progress=False,
                                   **SAMPLING)  # fmt: skip
        return [(r.predict, r.radius) for r in rows]

    return run


def run_predict(model, tmp_path):
    with ResultsFile(tmp_path / "p.tsv", PREDICT_COLUMNS) as results:
        rows = predict_dataset(model, data(), NOISE, results, indices=range(6), n=40, alpha=0.01, batch_size=20,
                               progress=False)  # fmt: skip
    return [r.predict for r in rows]


def run_smoothed(certifier_name):
    def run(model, tmp_path):
        smoothed = rs.SmoothedClassifier(model, NOISE, rs.Host().certifier(certifier_name))
        x = data(4).tensors[0]
        return [(c.prediction, c.radius) for c in smoothed.certify_batch(x, generator=generators(), **SAMPLING)]

    return run


def run_cohen_predict(model, tmp_path):
    return rs.cohen_predict(model, data(4).tensors[0], NOISE, n=40, alpha=0.01, batch_size=20, generator=generators())


def run_attack(sigma):
    def run(model, tmp_path):
        x, y = data(4).tensors
        result = rs.attack(model, x, y, attack="PGDL2", eps=[0.5], sigma=sigma, m=2, n=40, alpha=0.01, batch_size=20)
        return [(r.predict, r.adv_predict, round(r.perturbation, 5)) for r in result.rows]

    return run


ENTRY_POINTS = {
    "attack": run_attack(None),
    "attack, smoothed": run_attack(0.25),
    "confidence_dataset": run_confidence,
    "certify_dataset with a plugin certifier": run_certify(PlainCertifier()),
    "predict_dataset": run_predict,
    "cohen_predict": run_cohen_predict,
    **{f"certifier {name}": run_smoothed(name) for name in ("cohen", "feng", "sequential")},
}


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_a_model_in_train_mode_is_run_in_eval_mode_and_given_back(entry, tmp_path):
    run = ENTRY_POINTS[entry]
    reference = BatchNormNet().eval()
    expected = run(reference, tmp_path / "eval")
    model = BatchNormNet().train()
    statistics = [t.clone() for t in model.norm.state_dict().values()]
    assert run(model, tmp_path / "train") == expected
    assert model.training  # handed back in the mode it came in
    assert all(torch.equal(a, b) for a, b in zip(model.norm.state_dict().values(), statistics))


def test_the_mixed_certifier_runs_the_robust_member_in_eval_mode():
    """The mixture keeps its bases in eval mode whatever its own mode, so the robust member never sees batch stats."""
    host = rs.Host()
    g, h = BatchNormNet(), BatchNormNet()
    mixer = host.mixer("mix", [g, h], alpha=0.9)
    x = data(4).tensors[0]
    expected = host.certifier("mixed").certify(mixer.eval(), x, NOISE, generator=generators(), **SAMPLING)
    mixer.train()
    h.train()  # even set to train mode by hand
    got = host.certifier("mixed").certify(mixer, x, NOISE, generator=generators(), **SAMPLING)
    assert got == expected and mixer.training and h.training
