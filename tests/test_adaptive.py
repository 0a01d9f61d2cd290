"""Adaptive smoothing: the mixers, the mixing network's training, the mixed certificate and the trade-off command."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import norm
from statsmodels.stats.proportion import proportion_confint
from torch import nn

from rs_plugins import cli
from rs_plugins.builtin.adaptive import AdaptiveMixer, MixedClassifier, mix_log_probs
from rs_plugins.builtin.adaptive.certificate import (
    MixedCertifier,
    bernstein_margin,
    hoeffding_lower,
    hoeffding_upper,
    mixed_radius,
)
from rs_plugins.builtin.gaussian import GaussianNoise
from rs_plugins.certify.stats import clopper_pearson_upper
from rs_plugins.nets import SmallCNN
from rs_plugins.sources.data import load_digits
from rs_plugins.testing import LinearClassifier
from rs_plugins.train import mixer as mixing
from rs_plugins.train.mixer import MixerTrainConfig, train_mixer

FAST = ["--device", "cpu", "--no-progress"]


def bases(seed: int = 0) -> list[nn.Module]:
    torch.manual_seed(seed)
    return [SmallCNN(width=4), SmallCNN(width=4)]


def images(count: int = 6, seed: int = 1) -> torch.Tensor:
    return torch.rand(count, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


# -- the mixers ------------------------------------------------------------------------------------------------


def test_alpha_zero_and_one_reproduce_each_base_up_to_log_softmax():
    g, h = bases()
    x = images()
    with torch.no_grad():
        for alpha, base, scale in ((0.0, g, 1.7), (1.0, h, 0.3)):
            mixed = MixedClassifier([g, h], alpha=alpha, std_scale=1.7, rob_scale=0.3)(x)
            torch.testing.assert_close(mixed, F.log_softmax(scale * base(x), dim=1), rtol=0, atol=1e-6)


def test_mixture_is_the_probability_mixture():
    g, h = bases()
    x = images()
    with torch.no_grad():
        expected = 0.3 * torch.softmax(g(x), 1) + 0.7 * torch.softmax(h(x), 1)
        torch.testing.assert_close(MixedClassifier([g, h], alpha=0.7)(x).exp(), expected)


def test_bases_stay_frozen_and_in_eval_mode():
    g, h = bases()
    mixer = AdaptiveMixer([g, h], width=4).train()
    assert not g.training and not h.training and mixer.mixing.training
    assert not any(p.requires_grad for p in [*g.parameters(), *h.parameters()])
    assert all(p.requires_grad for p in mixer.trainable().parameters())


def test_gradients_reach_the_input_through_every_member_and_the_mixing_network():
    g, h = bases()
    x = images().requires_grad_(True)
    for alpha, member in ((0.0, g), (1.0, h)):  # each member alone carries gradient to the input
        (grad,) = torch.autograd.grad(MixedClassifier([g, h], alpha=alpha)(x)[:, 3].sum(), x)
        (alone,) = torch.autograd.grad(F.log_softmax(member(x), 1)[:, 3].sum(), x)
        assert grad.abs().sum() > 0
        torch.testing.assert_close(grad, alone)
    mixer = AdaptiveMixer([g, h], width=4).eval()
    out = mixer(x)
    (through_gamma,) = torch.autograd.grad(mixer.last_gamma.sum(), x, retain_graph=True)
    assert through_gamma.abs().sum() > 0  # the mixing network differentiates back to the input (adaptive attacks)
    out[:, 3].sum().backward()
    assert x.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mixer.mixing.linear.parameters())


def test_eval_alpha_stays_within_its_clamp():
    mixer = AdaptiveMixer(bases(), alpha_min=0.6, alpha_max=0.8, width=4)
    with torch.no_grad():
        mixer.mixing.linear.weight.mul_(1e4)  # an extreme γ either way
    mixer.train()
    mixer(images(32))  # running statistics of γ
    mixer.eval()
    x = torch.cat([images(32, seed=2), torch.zeros(2, 1, 8, 8), torch.ones(2, 1, 8, 8)])
    with torch.no_grad():
        mixer(x)
        alpha = mixer.alpha(mixer.last_gamma)
    assert alpha.min() >= 0.6 and alpha.max() <= 0.8
    assert mixer.certified_alpha == 0.6


def test_feature_layers_defaults_names_and_features_method():
    g, h = bases()
    assert AdaptiveMixer([g, h], width=4).taps[0].layers == ["features.1", "features.4"]
    named = AdaptiveMixer([g, h], width=4, std_layers="features.3,features.6")
    assert named.taps[0].layers == ["features.3", "features.6"]

    with pytest.raises(ValueError, match="no layer named 'nope'"):
        AdaptiveMixer([g, h], rob_layers="nope,features.4")
    with pytest.raises(ValueError, match="takes two layer names"):
        AdaptiveMixer([g, h], rob_layers="features.1")


def test_a_features_method_is_used_when_present():
    class Net(SmallCNN):
        def __init__(self):
            super().__init__(width=4)
            self.trunk = self._modules.pop("features")

        def forward(self, x):
            return self.head(self.trunk(x))

        def features(self, x):
            return self.trunk[:2](x), self.trunk[:5](x)

    torch.manual_seed(0)
    g, h = Net(), Net()
    mixer = AdaptiveMixer([g, h], width=4)
    assert mixer.taps[0].method is not None
    assert mixer(images()).shape == (6, 10)


def test_mixers_refuse_other_than_two_bases():
    with pytest.raises(ValueError, match="exactly two --model"):
        MixedClassifier(bases()[:1])
    with pytest.raises(ValueError, match="alpha must be a number in \\[0, 1\\]"):
        MixedClassifier(bases(), alpha=1.5)


# -- the mixed certificate -------------------------------------------------------------------------------------


def test_radius_at_alpha_one_is_cohens_and_shrinks_as_alpha_falls():
    sigma, p1, p2 = 0.5, np.array([0.9, 0.7, 0.99]), np.array([0.05, 0.2, 0.005])
    at_one = mixed_radius(p1, p2, 1.0, sigma)
    np.testing.assert_allclose(at_one, sigma / 2 * (norm.ppf(p1) - norm.ppf(p2)))
    np.testing.assert_allclose(mixed_radius(p1, 1 - p1, 1.0, sigma), sigma * norm.ppf(p1))  # Cohen, two classes
    previous = at_one
    for alpha in (0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.3):
        radius = mixed_radius(p1, p2, alpha, sigma)
        assert np.all(radius <= previous) and np.all(radius >= 0)
        previous = radius
    assert np.all(previous == 0)  # alpha <= 1/2 certifies nothing: g may outvote h


def test_radius_is_sound_against_the_exact_worst_case_on_a_linear_smoothed_base():
    """For a linear h at distance d from its boundary, h's smoothed top-class probability at distance t towards it
    is Phi((d - t)/sigma), and the mixture with an adversarial g keeps y while 2 Phi((d - t)/sigma) - 1 >= mu: its
    exact radius is d - sigma Phi^-1((1 + mu)/2). The certificate must not exceed it, and equals it (d) at alpha 1."""
    sigma, d = 0.5, 0.6
    p = norm.cdf(d / sigma)
    for alpha in (1.0, 0.95, 0.9, 0.8, 0.7, 0.6):
        mu = (1 - alpha) / alpha
        exact = max(0.0, d - sigma * norm.ppf((1 + mu) / 2))
        r = float(mixed_radius(p, 1 - p, alpha, sigma))
        assert r <= exact + 1e-9
        if alpha == 1.0:
            assert r == pytest.approx(d)
        p_at = norm.cdf((d - r) / sigma)
        assert alpha * (2 * p_at - 1) - (1 - alpha) >= -1e-9  # the worst-case mixture still favours y at r


def test_certifier_approaches_the_closed_form_from_below_on_a_linear_base():
    torch.manual_seed(0)
    w = torch.randn(1, 4, 4)
    sigma = 0.5
    linear = LinearClassifier(w, 0.0)
    x = torch.rand(3, 1, 4, 4)
    mixer = MixedClassifier([LinearClassifier(-w, 0.0), linear], alpha=0.9)  # g disagrees with h everywhere
    d = linear.distance(x).abs().numpy()
    exact = np.maximum(d - sigma * norm.ppf((1 + 1 / 9) / 2), 0)  # worst g, two classes: Phi(d/s - t) > (1+mu)/2
    certificates = MixedCertifier().certify(mixer, x, GaussianNoise(sigma), n0=100, n=20_000, alpha=0.001,
                                            batch_size=5000, generator=torch.Generator().manual_seed(0))  # fmt: skip
    radii = np.array([c.radius for c in certificates])
    assert np.all(radii <= exact + 1e-9)
    assert np.all(radii[exact > 0.05] > 0.8 * exact[exact > 0.05])


def test_certifier_refuses_a_model_that_is_not_a_mixture():
    with pytest.raises(ValueError, match="certifier 'mixed' certifies a mixture"):
        MixedCertifier().certify(SmallCNN(width=4), images(1), GaussianNoise(0.25), n0=10, n=20, alpha=0.01,
                                 batch_size=10)  # fmt: skip


def test_bonferroni_upper_bound_matches_statsmodels():
    counts, n, alpha, classes = np.array([3, 0, 17, 90]), 110, 0.001, 10
    ours = clopper_pearson_upper(counts, n, alpha / (2 * (classes - 1)))
    level = 2 * alpha / (2 * (classes - 1))  # statsmodels' two-sided interval puts half of its level on each side
    _, oracle = proportion_confint(counts, n, alpha=level, method="beta")
    np.testing.assert_allclose(ours, oracle, rtol=1e-9)


@pytest.mark.parametrize("bound", ["hoeffding", "bernstein"])
def test_soft_vote_bounds_cover_the_mean(bound):
    rng = np.random.default_rng(0)
    n, alpha, trials, mean = 200, 0.05, 4000, 0.3
    values = rng.beta(3, 7, size=(trials, n))  # [0, 1]-valued, mean 0.3
    sample_mean = values.mean(1)
    if bound == "hoeffding":
        lower, upper = hoeffding_lower(sample_mean, n, alpha), hoeffding_upper(sample_mean, n, alpha)
    else:
        margin = bernstein_margin(values.var(1, ddof=1), n, alpha)
        lower, upper = sample_mean - margin, sample_mean + margin
    assert np.mean(lower > mean) <= alpha and np.mean(upper < mean) <= alpha
    assert np.all(lower < sample_mean)


def test_soft_votes_certify_too():
    torch.manual_seed(0)
    w = torch.randn(1, 4, 4)
    mixer = MixedClassifier([LinearClassifier(-w, 0.0), LinearClassifier(w * 50, 0.0)], alpha=0.95)
    x = torch.rand(2, 1, 4, 4)
    for bound in ("hoeffding", "bernstein"):
        certificates = MixedCertifier(votes="soft", bound=bound).certify(
            mixer, x, GaussianNoise(0.25), n0=50, n=2000, alpha=0.001, batch_size=1000, generator=None
        )
        assert all(c.radius >= 0 for c in certificates)


def _modes(mixer):
    """The three ways α is made from γ: training, eval (squashed into [α_min, α_max]), the authors' attack view."""
    mixer.train()
    yield "train"
    mixer.eval()
    yield "eval"
    with mixer.authors_view():
        yield "authors view"


def test_log_weights_are_the_logs_of_alpha_computed_in_log_space():
    """Issue 25: log α and log(1 - α) come from γ by logsigmoid and logaddexp. They equal the logs of ``alpha`` (the
    former computation) to 1e-6: in float64 for |γ| <= 20 (beyond, 1 - sigmoid rounds even in float64), and in
    float32 where α is not near 0 or 1."""
    mixer = AdaptiveMixer(bases(), alpha_min=0.84, alpha_max=0.99, width=4)
    gamma = torch.linspace(-20, 20, 801)
    for mode in _modes(mixer):
        log_1m, log_a = mixer.log_weights(gamma)
        exact = mixer.alpha(gamma.double())
        torch.testing.assert_close(log_a.double(), exact.log(), rtol=1e-6, atol=1e-6, msg=mode)
        torch.testing.assert_close(log_1m.double(), (-exact).log1p(), rtol=1e-6, atol=1e-6, msg=mode)
        alpha = mixer.alpha(gamma)  # float32, as computed before
        inside = (alpha > 0.05) & (alpha < 0.95)
        torch.testing.assert_close(log_a[inside], alpha[inside].log(), rtol=0, atol=1e-6, msg=mode)
        torch.testing.assert_close(log_1m[inside], (-alpha[inside]).log1p(), rtol=0, atol=1e-6, msg=mode)


def test_the_mixture_is_unchanged_and_finite_where_alpha_saturates():
    g, h = bases()
    mixer = AdaptiveMixer([g, h], width=4)
    mixer.train()
    mixer(images(16))  # γ's running statistics
    x = images(6, seed=5)
    for mode in _modes(mixer):
        with torch.no_grad():
            out = mixer(x)
            alpha = mixer.alpha(mixer.last_gamma)
            before = mix_log_probs(g(x), h(x), alpha, mixer.std_scale, mixer.rob_scale)  # from α, as before
        torch.testing.assert_close(out, before, rtol=0, atol=1e-6, msg=mode)
    logits = torch.randn(4, 10)
    for gamma in (torch.full((4,), 200.0, requires_grad=True), torch.full((4,), -200.0, requires_grad=True)):
        for mode in _modes(mixer):
            out = mix_log_probs(logits, logits.roll(1, 1), None, 1.0, 1.0, log_weights=mixer.log_weights(gamma))
            (grad,) = torch.autograd.grad(out[:, 0].sum(), gamma)
            assert torch.isfinite(out).all() and torch.isfinite(grad).all(), mode
            exact = torch.sigmoid(gamma.detach())  # exactly 0 or 1 in float32: the former logs were -inf
            assert bool(((exact == 0) | (exact == 1)).all())


def test_an_alpha_range_of_one_value_has_constant_weights():
    mixer = AdaptiveMixer(bases(), alpha_min=1.0, alpha_max=1.0, width=4).eval()
    gamma = torch.tensor([-3.0, 0.0, 5.0], requires_grad=True)
    log_1m, log_a = mixer.log_weights(gamma)
    assert torch.equal(log_a, torch.zeros(3)) and bool(torch.isneginf(log_1m).all())
    assert not log_a.requires_grad


# -- training the mixing network ----------------------------------------------------------------------------------


def tiny_training(tmp_path, epochs: int = 2):
    torch.manual_seed(0)
    mixer = AdaptiveMixer(bases(), width=4)
    data = torch.utils.data.TensorDataset(images(40, seed=3), torch.arange(40) % 10)
    config = MixerTrainConfig(epochs=epochs, batch_size=20, lr=1e-3, accumulate=2, attack_steps=2, eps=0.2, targets=2,
                              extra_clean=1)  # fmt: skip
    log = train_mixer(mixer, data, config=config, checkpoint_dir=tmp_path, progress=False)
    return mixer, log


def test_training_at_a_high_learning_rate_logs_only_finite_losses(tmp_path):
    """Issue 25: at a high learning rate α = sigmoid(γ) saturated to exactly 0 or 1 in float32, log(α) or log(1 - α)
    was -inf with an infinite gradient, and training stopped with "the mixing-network loss became nan". From γ in
    log space every logged number stays finite."""
    torch.manual_seed(0)
    mixer = AdaptiveMixer(bases(), width=4)
    data = torch.utils.data.Subset(load_digits("train"), range(40))
    config = MixerTrainConfig(epochs=2, batch_size=10, lr=0.5, accumulate=1, eps=0.5, norm="L2", attack_steps=3,
                              targets=2, extra_clean=2, warmup=0.0)  # fmt: skip
    log = train_mixer(mixer, data, config=config, checkpoint_dir=tmp_path, progress=False)
    assert len(log) == 2
    assert all(math.isfinite(value) for entry in log for value in entry.values()), log
    assert all(torch.isfinite(p).all() for p in mixer.trainable().parameters())


def test_training_changes_only_the_mixing_network_and_resumes_exactly(tmp_path, monkeypatch):
    frozen = {k: v.clone() for k, v in bases()[0].state_dict().items()}
    straight, log = tiny_training(tmp_path / "a")
    assert {"bce", "ce", "alpha_clean", "alpha_attacked", "acc_attacked", "identical_share"} <= set(log[0])
    assert all(entry["identical_share"] == 0 for entry in log)
    assert all(torch.equal(v, straight.standard.state_dict()[k]) for k, v in frozen.items())

    def interrupt(directory, log):  # stop right after epoch 1's checkpoint, as a Ctrl-C or a kill would
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(mixing, "write_log", interrupt)
        with pytest.raises(KeyboardInterrupt):
            tiny_training(tmp_path / "b")
    resumed, _ = tiny_training(tmp_path / "b")
    for key, value in straight.trainable().state_dict().items():
        torch.testing.assert_close(resumed.trainable().state_dict()[key], value, rtol=0, atol=0)
    loaded = AdaptiveMixer(bases(), width=4, checkpoint=str(tmp_path / "a" / "mixing.pt"))
    assert torch.equal(loaded.mixing.linear.weight, straight.mixing.linear.weight)
    with pytest.raises(ValueError, match="schedule_epochs: 2 -> 3"):
        tiny_training(tmp_path / "b", epochs=3)


@pytest.mark.parametrize("norm", ["L2", "Linf"])
def test_every_attacked_example_differs_from_its_clean_twin_and_stays_in_its_ball(norm):
    # torchattacks' APGD/APGDT hand back the clean image wherever the model errs or the attack fails (92-95 % of
    # the digits benchmark's attacked half); the authors' attack never does. A 1-step attack at a small radius
    # fails on most images, so this fails for any attack that returns the clean image on failure.
    torch.manual_seed(0)
    mixer = AdaptiveMixer(bases(), width=4)
    x = 0.25 + 0.5 * images(12, seed=4)  # away from the box: the random start on the sphere is not clamped
    y = torch.arange(12) % 10
    eps = 0.3 if norm == "L2" else 0.03
    config = MixerTrainConfig(eps=eps, norm=norm, eps_low=1, eps_high=1, attack_steps=1, targets=3)
    adversarial = mixing.training_attacks(mixer, x, y, config, num_classes=10)
    assert len(adversarial) == 1 + 3
    for adv in adversarial:
        delta = (adv - x).flatten(1)
        assert (delta != 0).any(1).all()  # no attacked example equals its clean twin
        size = delta.norm(dim=1) if norm == "L2" else delta.abs().amax(1)
        assert (size <= eps * (1 + 1e-5)).all()
    assert mixer.training  # the attack's view is undone afterwards


def test_the_attack_sees_the_mixture_in_the_authors_view():
    torch.manual_seed(0)
    mixer = AdaptiveMixer(bases(), alpha_min=0.9, alpha_max=0.95, width=4)
    x = images(16)
    with mixer.authors_view():
        assert not mixer.gamma_norm.training  # γ's BatchNorm on its running statistics
        mixer(x)
        gamma = mixer.last_gamma
        raw = mixer.mixing(*mixer.taps[0](x)[1:], *mixer.taps[1](x)[1:])
        expected = F.batch_norm(raw.float()[:, None], mixer.gamma_norm.running_mean, mixer.gamma_norm.running_var,
                                training=False, eps=mixer.gamma_norm.eps)[:, 0] * 2.0 + 0.4  # fmt: skip
        torch.testing.assert_close(gamma, expected)  # the training constants (2, 0.4), no batch clamp
        alpha = mixer.alpha(gamma)
        torch.testing.assert_close(alpha, torch.sigmoid(gamma))  # unsquashed: not inside [0.9, 0.95]
    assert not mixer.attack_view


def test_alpha_and_the_mixture_stay_float32_under_bf16_autocast():
    # One-hot bases: the mixture's probability of the robust base's class is α itself. In bf16, 0.84 -> 0.83984.
    g, h = nn.Linear(4, 3), nn.Linear(4, 3)
    with torch.no_grad():
        for layer, cls in ((g, 0), (h, 1)):
            layer.weight.zero_()
            layer.bias.copy_(torch.tensor([30.0 * (i == cls) for i in range(3)]))
    mixer = MixedClassifier([g, h], alpha=0.84)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = mixer(torch.rand(2, 4))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.exp()[:, 1], torch.full((2,), 0.84), rtol=0, atol=1e-6)


def test_torchscript_bases_mix_and_differentiate():
    g, h = (torch.jit.script(m.eval()) for m in bases())
    mixer = MixedClassifier([g, h], alpha=0.7)
    x = images(2).requires_grad_()
    mixer(x).sum().backward()
    assert x.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in g.parameters())
    with pytest.raises(ValueError, match="TorchScript"):
        AdaptiveMixer([g, h], width=4)


# The authors' MixingNetV3/V4 and PreActBlock (models/mixing_net.py, models/base_models/small_rn.py), transcribed.
class AuthorsPreActBlock(nn.Module):
    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False))

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class AuthorsMixingNetV3(nn.Module):
    TABLE = {64: (64, 128, 256, 512), 160: (160, 320, 512, 768), 256: (256, 256, 384, 512), 512: (512, 256, 384, 512)}

    def __init__(self, in_planes=(64, 64)):
        super().__init__()
        self.ind_planes = [self.TABLE[p] for p in in_planes]
        self.planes = np.array(self.ind_planes).sum(axis=0)
        self.in_planes = int(self.planes[0])
        self.layers = nn.ModuleList([self._make_layer(int(pl), stride=2) for pl in self.planes[1:]])
        self.global_avg_pool = nn.AdaptiveAvgPool2d((1, 1))
        self.linear = nn.Linear(int(self.planes[-1]), 1, bias=False)

    def _make_layer(self, planes, stride, num_blocks=2):
        layers = []
        for step in [stride] + [1] * (num_blocks - 1):
            layers.append(AuthorsPreActBlock(self.in_planes, planes, step))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, feats1, feats2):
        feats = self.layers[0](torch.cat(feats1, dim=1)) + torch.cat(feats2, dim=1)
        for layer in self.layers[1:]:
            feats = layer(feats)
        return self.linear(self.global_avg_pool(feats).reshape(-1, int(self.planes[-1])))


class AuthorsMixingNetV4(AuthorsMixingNetV3):
    def __init__(self, in_planes=(64, 64)):
        super().__init__(in_planes)
        in_1x1 = (self.ind_planes[0][0] + self.ind_planes[1][0]) * 2
        self.conv1x1 = nn.Conv2d(in_1x1, self.ind_planes[0][1] + self.ind_planes[1][1], kernel_size=1, bias=False)

    def forward(self, feats1, feats2):
        feats = self.layers[0](torch.cat(feats1, dim=1)) + self.conv1x1(torch.cat(feats2, dim=1))
        for layer in self.layers[1:]:
            feats = layer(feats)
        return self.linear(self.global_avg_pool(feats).reshape(-1, int(self.planes[-1])))


def _authors_names(name: str) -> str:
    return (name.replace("stages.", "layers.").replace("shortcut.weight", "shortcut.0.weight")
            .replace("fuse.", "conv1x1."))  # fmt: skip


@pytest.mark.parametrize("version", [3, 4])
def test_paper_mixing_networks_equal_the_authors_for_a_preact_resnet18_pair(version):
    from rs_plugins.builtin.adaptive.networks import PaperMixingNetwork

    # PreAct-ResNet-18 taps: layer1 (64 channels) and layer2 (128), for each base.
    ours = PaperMixingNetwork((64, 128, 64, 128), version=version)
    theirs = (AuthorsMixingNetV3 if version == 3 else AuthorsMixingNetV4)()
    count = sum(p.numel() for p in ours.parameters())
    assert count == sum(p.numel() for p in theirs.parameters())
    if version == 3:
        assert 44.0e6 < count < 44.2e6  # the issue's "about 44.1 M", now derived from the authors' class
    state = theirs.state_dict()
    assert sorted(state) == sorted(_authors_names(k) for k in ours.state_dict())
    ours.load_state_dict({k: state[_authors_names(k)] for k in ours.state_dict()})
    ours, theirs = ours.double().eval(), theirs.double().eval()
    generator = torch.Generator().manual_seed(0)
    f1 = [torch.rand(2, 64, 8, 8, generator=generator, dtype=torch.float64) for _ in range(2)]
    f2 = [torch.rand(2, 128, 4, 4, generator=generator, dtype=torch.float64) for _ in range(2)]
    with torch.no_grad():
        torch.testing.assert_close(ours(f1[0], f2[0], f1[1], f2[1]), theirs(f1, f2)[:, 0], rtol=1e-12, atol=1e-12)


def test_net_option_selects_the_mixing_network():
    from rs_plugins.builtin.adaptive.networks import MixingNetwork, PaperMixingNetwork

    assert isinstance(AdaptiveMixer(bases(), width=4).mixing, MixingNetwork)
    assert isinstance(AdaptiveMixer(bases(), net="small").mixing, MixingNetwork)
    paper = AdaptiveMixer(bases()).mixing  # SmallCNN(width=4): stage-2 taps of 8 channels fit V3
    assert isinstance(paper, PaperMixingNetwork) and paper.version == 3
    assert AdaptiveMixer(bases(), net="v4").mixing.version == 4
    with pytest.raises(ValueError, match="net must be one of v3, v4, small"):
        AdaptiveMixer(bases(), net="v5")
    with pytest.raises(ValueError, match="width sets net=small only"):
        AdaptiveMixer(bases(), net="v3", width=4)


# -- the command line ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("adaptive")
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        paths.append(root / f"m{seed}.pt")
        torch.save(SmallCNN(width=4).state_dict(), paths[-1])
    return root, paths


def two_models(paths) -> list[str]:
    m = "rs_plugins.nets:SmallCNN"
    return ["--model", m, "--checkpoint", str(paths[0]), "--model", m, "--checkpoint", str(paths[1]),
            "--model-kwargs", '{"width": 4}']  # fmt: skip


def test_certify_with_the_mixed_certifier_writes_sidecar_and_resumes(checkpoints, capsys):
    root, paths = checkpoints
    out = root / "mixed.tsv"
    argv = ["certify", *two_models(paths), "--mixer", "mix", "--mixer-option", "alpha=0.9", "--certifier", "mixed",
            "--data", "digits", "--sigma", "0.25", "--n0", "10", "--n", "50", "--limit", "3", "--out", str(out),
            *FAST]  # fmt: skip
    assert cli.main(argv) == 0
    first = out.read_text()
    assert len(first.splitlines()) == 4
    sidecar = (root / "mixed.tsv.json").read_text()
    assert "model_sha256" in sidecar and '"checkpoint": [' in sidecar
    assert cli.main(argv) == 0 and out.read_text() == first  # resumed: nothing redone


def test_an_untrained_mixing_network_is_refused_unless_factory_weights(checkpoints, capsys, tmp_path):
    """Issue 25: `certify --mixer adaptive --certifier mixed` without the mixing network's checkpoint certified an
    untrained mixing network and exited 0."""
    _, paths = checkpoints
    argv = ["certify", *two_models(paths), "--mixer", "adaptive", "--mixer-option", "width=4", "--certifier", "mixed",
            "--data", "digits", "--sigma", "0.25", "--n0", "10", "--n", "20", "--limit", "1",
            "--out", str(tmp_path / "a.tsv"), *FAST]  # fmt: skip
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "--mixer adaptive has no --mixer-option checkpoint=MIXING_PT" in err and "train-mixer" in err
    assert not (tmp_path / "a.tsv").exists()
    assert cli.main([*argv, "--factory-weights"]) == 0


def test_checkpoints_pair_with_models_in_order(checkpoints, capsys):
    _, paths = checkpoints
    m = "rs_plugins.nets:SmallCNN"
    argv = ["predict", "--model", m, "--model", m, "--checkpoint", str(paths[0]), "--mixer", "mix",
            "--data", "digits", "--sigma", "0.25", "--n", "20", "--limit", "1", *FAST]  # fmt: skip
    assert cli.main(argv) == 2
    assert "--checkpoint given 1 times for 2 --model" in capsys.readouterr().err


def test_tradeoff_writes_table_and_plot(checkpoints, tmp_path, capsys):
    _, paths = checkpoints
    out, plot = tmp_path / "t.csv", tmp_path / "t.png"
    mixing = tmp_path / "mixing.pt"
    torch.manual_seed(0)
    torch.save(AdaptiveMixer(bases(), width=4).trainable().state_dict(), mixing)
    argv = ["tradeoff", *two_models(paths), "--mixer-option", "width=4", "--adaptive", str(mixing),
            "--alphas", "0", "1", "--data", "digits", "--limit", "4", "--attack", "PGD", "--eps", "0.05",
            "--attack-option", "steps=2", "--sigma", "0.25", "--radii", "0", "0.1", "--n0", "10", "--n", "30",
            "--out", str(out), "--plot", str(plot), *FAST]  # fmt: skip
    assert cli.main(argv) == 0, capsys.readouterr().err
    rows = list(csv.DictReader(out.open()))
    assert [r["mixer"] for r in rows] == ["alpha=0", "alpha=1", "adaptive"]
    assert {"clean_accuracy", "robust_accuracy", "certified_0", "certified_0.1"} <= set(rows[0])
    assert float(rows[0]["certified_0"]) == 0  # alpha = 0 trusts g alone: nothing is certified
    assert plot.stat().st_size > 0


def test_default_feature_layers_of_the_robustbench_architectures():
    from rs_plugins.sources.models import import_robustbench

    import_robustbench()  # robustbench 1.1.1 needs its import fixes first
    from robustbench.model_zoo.architectures.dm_wide_resnet import DMPreActResNet, DMWideResNet
    from robustbench.model_zoo.architectures.resnet import PreActResNet18
    from robustbench.model_zoo.architectures.wide_resnet import WideResNet

    expected = {
        WideResNet: (lambda: WideResNet(depth=10, widen_factor=1), ["block1", "block2"]),
        DMWideResNet: (lambda: DMWideResNet(depth=10, width=1), ["layer.0", "layer.1"]),
        DMPreActResNet: (lambda: DMPreActResNet(depth=18, width=0), ["layer_0", "layer_1"]),
        PreActResNet18: (PreActResNet18, ["layer1", "layer2"]),
    }
    for make, layers in expected.values():
        mixer = AdaptiveMixer([make(), make()], width=4).eval()
        assert mixer.taps[0].layers == layers and mixer.taps[1].layers == layers
        assert mixer(torch.rand(1, 3, 32, 32)).shape == (1, 10)


def test_mixed_certifier_sees_through_the_execution_wrapper():
    """certify wraps the mixture for --precision/--channels-last; the certificate smooths h run the same way."""
    from rs_plugins.certify.execution import Execution, RunAs, prepare_model

    torch.manual_seed(0)
    w = torch.randn(1, 4, 4)
    mixer = MixedClassifier([LinearClassifier(-w, 0.0), LinearClassifier(w, 0.0)], alpha=0.9)
    wrapped = prepare_model(mixer, "cpu", Execution(precision="bf16", channels_last=True))
    x = torch.rand(2, 1, 4, 4)
    options = dict(n0=20, n=200, alpha=0.01, batch_size=100)
    plain = MixedCertifier().certify(mixer, x, GaussianNoise(0.5), generator=torch.Generator().manual_seed(0),
                                     **options)  # fmt: skip
    run_as = MixedCertifier().certify(wrapped, x, GaussianNoise(0.5), generator=torch.Generator().manual_seed(0),
                                      **options)  # fmt: skip
    assert isinstance(wrapped, RunAs) and len(run_as) == len(plain) == 2
    assert [c.prediction for c in run_as] == [c.prediction for c in plain]
