"""Consistency, MACER and ADRE against the papers' formulas written out plainly, plus their edge cases and contracts.

The losses are called with ``FixedNoise``, whose draws are precomputed, so each test can recompute the logits of
every noisy copy on its own and evaluate the formula with explicit loops over images and copies, independently
of the vectorised code under test. The model runs in eval mode, so BatchNorm treats every row on its own and the
losses' single forward pass over all copies gives the same logits as one pass per copy.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from scipy.stats import norm

from rs_plugins import Host
from rs_plugins.builtin.consistency import ConsistencyLoss, consistency_term
from rs_plugins.builtin.feng import AdreLoss, runner_up_log_prob
from rs_plugins.builtin.gaussian import GaussianAugmentation, GaussianNoise
from rs_plugins.builtin.macer import MacerLoss, macer_terms
from rs_plugins.errors import PluginBuildError
from rs_plugins.testing import check_loss, tiny_classifier
from rs_plugins.train.losses import draw_deltas, warmup_factor

B, K, SIGMA = 8, 3, 0.5
# The fresh tiny classifier predicts class 2 for every image below: half the labels agree, half do not.
LABELS = torch.tensor([2, 0, 2, 1, 2, 0, 2, 1])


class FixedNoise:
    """A noise sampler whose m draws per image are fixed: ``deltas[i, b]`` is copy i of image b."""

    norm = "l2"

    def __init__(self, m: int, sigma: float = SIGMA) -> None:
        self.sigma = sigma
        self.deltas = sigma * torch.randn(m, B, 1, 8, 8, generator=torch.Generator().manual_seed(1))

    def sample(self, x, *, generator=None):
        return x + self.deltas.flatten(0, 1)  # copy-major rows: copy i of image b is row i * B + b


@pytest.fixture
def model():
    return tiny_classifier(num_classes=K).eval()


@pytest.fixture
def x():
    return torch.rand(B, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def copy_logits(model, x, noise):
    """Logits of each noisy copy from its own forward pass: a list of m (B, K) tensors."""
    with torch.no_grad():
        return [model(x + delta) for delta in noise.deltas]


def plain_consistency(logits, y, lbd, eta, variant):
    """(mean CE, mean regulariser, mean KL) of Jeong & Shin, one image and one copy at a time."""
    m, ce, reg, kl = len(logits), 0.0, 0.0, 0.0
    for b in range(B):
        log_ps = [torch.log_softmax(z[b], dim=0) for z in logits]
        p_bar = sum(lp.exp() for lp in log_ps) / m
        ce += sum(-lp[y[b]] for lp in log_ps) / m
        kl_b = sum((p_bar * (p_bar.log() - lp)).sum() for lp in log_ps) / m
        entropy = -(p_bar * p_bar.log()).sum()
        if variant == "default":
            reg += lbd * kl_b + eta * entropy
        elif variant == "xent":
            reg += lbd * (kl_b + entropy)
        elif variant == "kl":
            reg += lbd * kl_b
        else:  # mse: squared distance between the first two copies' probabilities
            reg += lbd * ((log_ps[1].exp() - log_ps[0].exp()) ** 2).sum()
        kl += kl_b
    return ce / B, reg / B, kl / B


@pytest.mark.parametrize("variant, m", [("default", 3), ("xent", 2), ("kl", 2), ("mse", 2)])
def test_consistency_matches_the_formula(model, x, variant, m):
    """Loss and parts equal CE + the variant's regulariser recomputed per image and copy (lbd != eta on purpose)."""
    noise = FixedNoise(m)
    out = ConsistencyLoss(m=m, lbd=2.0, eta=0.7, variant=variant)(model, x, LABELS, noise, progress=0.5)
    ce, reg, kl = plain_consistency(copy_logits(model, x, noise), LABELS, 2.0, 0.7, variant)
    assert out.loss.item() == pytest.approx(float(ce + reg), rel=1e-5)
    assert float(out.parts["xent"]) == pytest.approx(float(ce), rel=1e-5)
    assert float(out.parts["consistency"]) == pytest.approx(float(reg), rel=1e-5)
    assert float(out.parts["kl"]) == pytest.approx(float(kl), rel=1e-4)
    assert float(kl) > 0  # the copies disagree, so the KL check compares something


def test_consistency_without_weights_is_the_mean_cross_entropy(model, x):
    """lbd = eta = 0 leaves the cross-entropy averaged over the m copies."""
    noise = FixedNoise(3)
    out = ConsistencyLoss(m=3, lbd=0.0, eta=0.0)(model, x, LABELS, noise, progress=0.5)
    expected = sum(F.cross_entropy(z, LABELS) for z in copy_logits(model, x, noise)) / 3
    assert out.loss.item() == pytest.approx(float(expected), rel=1e-5)


def test_consistency_with_one_copy_is_cross_entropy_plus_entropy(model, x):
    """With m = 1 the averaged prediction is the copy's own, so KL vanishes and only eta * H(p) remains."""
    noise = FixedNoise(1)
    out = ConsistencyLoss(m=1, lbd=5.0, eta=0.3)(model, x, LABELS, noise, progress=0.5)
    (logits,) = copy_logits(model, x, noise)
    probs = torch.softmax(logits, dim=1)
    entropy = -(probs * probs.log()).sum(1).mean()
    assert float(out.parts["kl"]) == pytest.approx(0.0, abs=1e-6)  # log(exp(.)) rounding only
    assert out.loss.item() == pytest.approx(float(F.cross_entropy(logits, LABELS) + 0.3 * entropy), rel=1e-5)


def test_consistency_with_one_copy_and_no_weights_is_gaussian_augmentation(model, x):
    """m = 1, lbd = eta = 0 is Cohen's Gaussian augmentation given the same noise draw."""
    noise = FixedNoise(1)
    consistency = ConsistencyLoss(m=1, lbd=0.0, eta=0.0)(model, x, LABELS, noise, progress=0.5)
    gaussian = GaussianAugmentation()(model, x, LABELS, noise, progress=0.5)
    torch.testing.assert_close(consistency.loss, gaussian.loss)


def test_draw_deltas_is_copy_major(x):
    """Row i * B + b of the sampler's batch becomes copy i of image b."""
    noise = FixedNoise(3)
    torch.testing.assert_close(draw_deltas(noise, x, 3), noise.deltas)


def plain_macer(logits, y, sigma, beta, gamma):
    """(L_cls / B, L_rob / B, share of images in L_rob) of Zhai et al., one image at a time, Phi^-1 from scipy."""
    k, cls, rob, kept = len(logits), 0.0, 0.0, 0
    for b in range(B):
        p = sum(torch.softmax(z[b], dim=0) for z in logits) / k
        cls += -math.log(float(p[y[b]]) + 1e-10)
        p_beta = sum(torch.softmax(beta * z[b], dim=0) for z in logits) / k
        t1, t2 = sorted(p_beta.tolist(), reverse=True)[:2]
        xi = norm.ppf(t1) - norm.ppf(t2)
        if int(p_beta.argmax()) == int(y[b]) and math.isfinite(xi) and xi <= gamma:
            rob += sigma / 2 * (gamma - xi)
            kept += 1
    return cls / B, rob / B, kept / B


def test_macer_matches_the_formula(model, x):
    """Loss and parts equal (sum L_cls + lbd * L_rob) / B; gamma 1.5 drops one correct image by xi > gamma."""
    noise = FixedNoise(4)
    out = MacerLoss(k=4, beta=16.0, gamma=1.5, lbd=3.0)(model, x, LABELS, noise, progress=0.5)
    cls, rob, share = plain_macer(copy_logits(model, x, noise), LABELS, SIGMA, 16.0, 1.5)
    assert 0 < share < 0.5  # some correct images kept, one correct image and every wrong one dropped
    assert out.loss.item() == pytest.approx(cls + 3.0 * rob, rel=1e-4)
    assert float(out.parts["cls"]) == pytest.approx(cls, rel=1e-5)
    assert float(out.parts["rob"]) == pytest.approx(rob, rel=1e-4)
    assert float(out.parts["rob_share"]) == share


def test_macer_without_lbd_or_deferred_is_the_classification_term(model, x):
    """lbd = 0, or an epoch before deferred_epochs, leaves L_cls; from epoch deferred_epochs on L_rob counts."""
    noise = FixedNoise(4)
    plain = MacerLoss(k=4, lbd=0.0)(model, x, LABELS, noise, progress=0.5)
    assert float(plain.parts["rob"]) > 0
    torch.testing.assert_close(plain.loss, plain.parts["cls"])

    deferred = MacerLoss(k=4, lbd=12.0, deferred_epochs=5)
    deferred.set_epoch(2)
    early = deferred(model, x, LABELS, noise, progress=0.1)
    torch.testing.assert_close(early.loss, early.parts["cls"])
    deferred.set_epoch(5)
    late = deferred(model, x, LABELS, noise, progress=0.5)
    torch.testing.assert_close(late.loss, late.parts["cls"] + 12.0 * late.parts["rob"])
    assert late.loss.item() > float(late.parts["cls"])


def test_macer_robustness_mask_on_hand_built_logits():
    """Only image 0 enters L_rob: image 1 is misclassified, image 2 has p_beta = (1, 0, 0) so xi is infinite,
    and image 3 is correct but its xi exceeds gamma."""
    row = {"kept": [0.3, 0.0, 0.0], "sure": [200.0, 0.0, 0.0], "far": [3.0, 0.0, 0.0]}
    logits = torch.tensor([[row["kept"], row["kept"], row["sure"], row["far"]]] * 2)  # (k=2, B=4, K=3)
    y = torch.tensor([0, 1, 0, 0])
    classification, robustness, kept = macer_terms(logits, y, sigma=0.5, beta=1.0, gamma=1.0)
    p = torch.softmax(torch.tensor(row["kept"], dtype=torch.float64), dim=0)
    xi = norm.ppf(float(p[0])) - norm.ppf(float(p[1]))
    assert int(kept) == 1
    assert float(robustness) == pytest.approx(0.25 * (1.0 - xi), rel=1e-5)
    far = torch.softmax(torch.tensor(row["far"]), dim=0)
    assert norm.ppf(float(far[0])) - norm.ppf(float(far[1])) > 1.0  # image 3 is out for xi > gamma only
    expected_cls = -math.log(float(p[0])) - math.log(float(p[1])) - math.log(float(far[0]))  # image 2: log 1 = 0
    assert float(classification) == pytest.approx(expected_cls, rel=1e-5)


def test_adre_matches_the_formula(model, x):
    """Loss and parts equal mean CE + lbd * log(G_c* + 1e-10), c* the most likely wrong class of G."""
    noise = FixedNoise(4)
    out = AdreLoss(k=4, lbd=0.5)(model, x, LABELS, noise, progress=0.5)
    logits, ce, log_runner_up = copy_logits(model, x, noise), 0.0, 0.0
    for b in range(B):
        ce += sum(-float(torch.log_softmax(z[b], dim=0)[LABELS[b]]) for z in logits) / 4
        g = sum(torch.softmax(z[b], dim=0) for z in logits) / 4
        log_runner_up += math.log(max(float(g[c]) for c in range(K) if c != LABELS[b]) + 1e-10)
    ce, log_runner_up = ce / B, log_runner_up / B
    assert out.loss.item() == pytest.approx(ce + 0.5 * log_runner_up, rel=1e-5)
    assert float(out.parts["xent"]) == pytest.approx(ce, rel=1e-5)
    assert float(out.parts["log_runner_up"]) == pytest.approx(log_runner_up, rel=1e-5)
    assert AdreLoss(k=4, lbd=0.0)(model, x, LABELS, noise, progress=0.5).loss.item() == pytest.approx(ce, rel=1e-5)


def test_runner_up_is_the_largest_wrong_class():
    """c* is the second class when y is the argmax and the first class otherwise."""
    smoothed = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.1, 0.2, 0.7], [0.3, 0.6, 0.1]])
    y = torch.tensor([0, 0, 2, 2])
    expected = torch.tensor([0.3, 0.5, 0.2, 0.6]).add(1e-10).log()
    torch.testing.assert_close(runner_up_log_prob(smoothed, y), expected)


def test_consistency_term_is_zero_for_identical_copies():
    """Identical copies: KL is 0 and the default regulariser is eta times the entropy."""
    logits = torch.tensor([[1.0, 0.0, -1.0], [0.0, 2.0, 0.0]]).expand(2, 2, 3)
    term, kl = consistency_term(logits, lbd=10.0, eta=0.5)
    probs = torch.softmax(logits[0], dim=1)
    assert float(kl) == pytest.approx(0.0, abs=1e-6)
    assert float(term) == pytest.approx(float(-0.5 * (probs * probs.log()).sum(1).mean()), rel=1e-5)


LOSSES = {
    "consistency": lambda: ConsistencyLoss(m=2),
    "consistency-adv": lambda: ConsistencyLoss(m=2, adversarial=True, steps=1),
    "macer": lambda: MacerLoss(k=4),
    "adre": lambda: AdreLoss(k=4),
    "adre-adv": lambda: AdreLoss(k=2, scheme="adversarial", steps=1),
}


@pytest.mark.parametrize("name", LOSSES)
def test_loss_contract(name):
    """The host's contract check: finite scalar, detached parts, gradients everywhere, mode and flags kept."""
    check_loss(LOSSES[name](), GaussianNoise(0.25))


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("training", [True, False])
def test_loss_keeps_a_frozen_parameter_frozen(name, training):
    """A parameter frozen beforehand stays frozen and gets no gradient; the others keep requires_grad and get one."""
    model = tiny_classifier(num_classes=K).train(training)
    model[0].bias.requires_grad_(False)
    x = torch.rand(B, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    LOSSES[name]()(model, x, LABELS, GaussianNoise(0.25), progress=0.5).loss.backward()
    assert model.training == training and all(module.training == training for module in model.modules())
    assert not model[0].bias.requires_grad and model[0].bias.grad is None
    others = [p for p in model.parameters() if p is not model[0].bias]
    assert all(p.requires_grad and p.grad is not None for p in others)


@pytest.mark.parametrize(
    "build, options, words",
    [
        (ConsistencyLoss, {"variant": "bogus"}, ["variant", "default", "xent", "kl", "mse"]),
        (ConsistencyLoss, {"variant": "mse", "m": 1}, ["mse", "m >= 2"]),
        (ConsistencyLoss, {"m": 0}, ["m must", ">= 1"]),
        (ConsistencyLoss, {"lbd": -1.0}, ["lbd must", ">= 0"]),
        (ConsistencyLoss, {"eta": -0.5}, ["eta must", ">= 0"]),
        (MacerLoss, {"k": 0}, ["k must", ">= 1"]),
        (MacerLoss, {"beta": 0.0}, ["beta must", "> 0"]),
        (MacerLoss, {"lbd": -1.0}, ["lbd must", ">= 0"]),
        (MacerLoss, {"deferred_epochs": -1}, ["deferred_epochs must", ">= 0"]),
        (AdreLoss, {"scheme": "x"}, ["scheme", "standard", "adversarial"]),
        (AdreLoss, {"lbd": -0.1}, ["lbd must", ">= 0"]),
        (AdreLoss, {"k": 1.5}, ["k must", "integer"]),
    ],
)
def test_bad_options_are_named(build, options, words):
    """A bad option raises ValueError naming the option and what it accepts."""
    with pytest.raises(ValueError) as err:
        build(**options)
    assert all(word in str(err.value) for word in words), str(err.value)


def test_host_attributes_build_errors_to_the_loss():
    """Built through the host, a bad option surfaces as PluginBuildError naming the loss and the option."""
    with pytest.raises(PluginBuildError) as err:
        Host().loss("macer", k=0)
    assert "'macer'" in str(err.value) and "k must be an integer >= 1" in str(err.value)


PAPERS = [("consistency", "2006.04062"), ("macer", "2001.02378"), ("adre", "2002.07246")]


@pytest.mark.parametrize("name, arxiv", PAPERS)
def test_losses_are_entry_point_plugins_citing_their_paper(name, arxiv):
    """Each loss is found through the entry points and its spec cites the paper's arXiv id."""
    host = Host()
    assert name in host.names("loss")
    assert arxiv in host.component("loss", name).spec.reference


def test_chunks():
    """Consistency splits a loader batch into m chunks unless told not to; MACER and ADRE take one step per batch."""
    assert ConsistencyLoss(m=3).chunks == 3
    assert ConsistencyLoss(m=3, split_batch=False).chunks == 1
    assert MacerLoss().chunks == AdreLoss().chunks == 1


def test_warmup_factor():
    """Linear warm-up (epoch + 1) / warmup capped at 1; full strength when the epoch is unknown or warmup is 0."""
    assert warmup_factor(None, 10) == 1.0 and warmup_factor(3, 0) == 1.0
    assert warmup_factor(0, 10) == pytest.approx(0.1) and warmup_factor(4, 10) == pytest.approx(0.5)
    assert warmup_factor(9, 10) == warmup_factor(50, 10) == 1.0


def test_macer_gradient_stays_finite_when_soft_probabilities_saturate():
    """Phi^-1 has an infinite derivative at 0 and 1; images dropped for that reason must not turn the gradient
    into NaN (0 times infinity), which would wreck training at the first saturated batch."""
    logits = torch.tensor([[[60.0, 0.0, 0.0], [0.0, 1.0, 0.5]], [[60.0, 0.0, 0.0], [0.0, 0.8, 0.4]]])
    logits.requires_grad_(True)
    y = torch.tensor([0, 1])
    classification, robustness, kept = macer_terms(logits, y, sigma=0.25, beta=16.0, gamma=8.0)
    assert int(kept) == 1  # the saturated first image is dropped, the second kept
    (classification + 12 * robustness).backward()
    assert torch.isfinite(logits.grad).all(), logits.grad
    assert logits.grad[:, 1].abs().sum() > 0
