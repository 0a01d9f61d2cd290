"""Every installed component honours its kind's contract (the checks ship in rs_plugins.testing)."""

import pytest
import torch

from rs_plugins import Host, LossOutput
from rs_plugins.builtin.gaussian import GaussianNoise
from rs_plugins.testing import check_certifier, check_loss, check_mixer, check_noise, tiny_classifier

HOST = Host()


def available(kind):
    return [c.spec.name for c in HOST.components(kind) if not c.missing]


@pytest.mark.parametrize("name", available("noise"))
def test_noise_contract(name):
    check_noise(HOST.noise(name, sigma=0.5))


class WithTargets:
    """The runner's part for a loss with per-example targets: CAT-RS's p_b (uniform here) with every batch."""

    def __init__(self, loss):
        self.loss = loss

    def __call__(self, model, x, y, noise, *, progress):
        p_b = torch.full((len(x), 3), 1 / 3)
        return self.loss(model, x, y, noise, progress=progress, targets={"p_b": p_b})


@pytest.mark.parametrize("name", available("loss"))
def test_loss_contract(name):
    if name == "catrs":  # its p_b file is read by the runner (example_targets), not here
        loss = WithTargets(HOST.loss(name, confidence="p_b.tsv", steps=1))
    else:
        loss = HOST.loss(name)
    check_loss(loss, HOST.noise("gaussian", sigma=0.25))


@pytest.mark.parametrize("name", available("certifier"))
def test_certifier_contract(name):
    model = None
    if name == "mixed":  # it certifies a mixture of an accurate and a robust classifier
        model = HOST.mixer("mix", [tiny_classifier(seed=0), tiny_classifier(seed=1)], alpha=0.9)
    check_certifier(HOST.certifier(name), HOST.noise("gaussian", sigma=0.25), model=model)


@pytest.mark.parametrize("name", available("mixer"))
def test_mixer_contract(name):
    options = {"std_layers": "0,2", "rob_layers": "0,2", "probe_size": 8} if name == "adaptive" else {}
    check_mixer(HOST.mixer(name, [tiny_classifier(seed=0), tiny_classifier(seed=1)], **options).eval())


class WrongScale(GaussianNoise):
    def sample(self, x, *, generator=None):
        return x + 2 * (super().sample(x, generator=generator) - x)  # twice the advertised sigma


class EvalModeLoss:
    def __call__(self, model, x, y, noise, *, progress):
        model.eval()
        return LossOutput(torch.nn.functional.cross_entropy(model(x), y))


class CertifiesWhenAbstaining:
    def certify(self, model, x, noise, **sampling):
        from rs_plugins import Certificate

        return [Certificate(-1, 0.3, 0.4) for _ in x]


def test_the_checks_catch_broken_components():
    with pytest.raises(AssertionError, match="noise std"):
        check_noise(WrongScale(0.5))
    with pytest.raises(AssertionError, match="leave model.training"):
        check_loss(EvalModeLoss(), GaussianNoise(0.25))
    with pytest.raises(AssertionError, match="abstention must have radius 0"):
        check_certifier(CertifiesWhenAbstaining(), GaussianNoise(0.25))
