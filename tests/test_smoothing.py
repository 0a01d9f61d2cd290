"""CERTIFY and PREDICT against the closed form of a linear base classifier under Gaussian noise.

For f(x) = [w.x + b > 0] the smoothed classifier's top-class probability is Phi(d / sigma), d = |w.x + b| / ||w||,
and the exact certified radius is d. Cohen's radius must not exceed d (beyond the alpha rate) and must approach it.
"""

import warnings

import pytest
import torch
from scipy.stats import norm

from rs_plugins import ABSTAIN, SmoothedClassifier, cohen_certify, cohen_predict
from rs_plugins.builtin.gaussian import GaussianNoise
from rs_plugins.certify.sampling import sample_counts
from rs_plugins.testing import LinearClassifier, tiny_classifier

SIGMA = 0.5


@pytest.fixture
def linear():
    """A boundary through the grey image; moving along w/||w|| by d gives a point at distance d."""
    w = torch.tensor([1.0, -1.0] * 8).reshape(1, 4, 4)
    centre = torch.full((1, 4, 4), 0.5)
    model = LinearClassifier(w, b=-float((w * centre).sum()))
    unit = w / w.norm()

    def at(d: float, copies: int = 1) -> torch.Tensor:
        return (centre + d * unit).expand(copies, 1, 4, 4).clone()

    return model, at


def generators(count, offset=0):
    return [torch.Generator().manual_seed(offset + i) for i in range(count)]


def test_counts_follow_the_closed_form_probability(linear):
    model, at = linear
    d, num = 0.3, 40_000
    counts = sample_counts(model, at(d), GaussianNoise(SIGMA), num, batch_size=4096, generator=generators(1))
    assert counts.shape == (1, 2) and counts.sum() == num
    p, sd = norm.cdf(d / SIGMA), (norm.cdf(d / SIGMA) * norm.sf(d / SIGMA) / num) ** 0.5
    assert abs(counts[0, 1].item() / num - p) < 4 * sd


@pytest.mark.parametrize("d", [0.2, 0.4, 0.8, 1.2])
def test_radius_never_exceeds_and_approaches_the_exact_radius(linear, d):
    model, at = linear
    noise = GaussianNoise(SIGMA)
    small = cohen_certify(model, at(d), noise, n0=100, n=1_000, alpha=0.001, batch_size=1000, generator=generators(1))[
        0
    ]
    large = cohen_certify(
        model, at(d), noise, n0=100, n=100_000, alpha=0.001, batch_size=10_000, generator=generators(1)
    )[0]
    assert large.prediction == 1 and small.prediction in (1, ABSTAIN)  # few samples may abstain, never mislead
    assert small.radius <= large.radius <= d
    assert d - large.radius < 0.05 * SIGMA  # within the confidence-bound gap for n = 100 000
    assert large.radius == pytest.approx(SIGMA * norm.ppf(large.p_lower))


def test_radius_exceeds_the_truth_at_most_at_the_alpha_rate(linear):
    model, at = linear
    d, alpha, trials = 0.5, 0.05, 400
    certs = cohen_certify(
        model,
        at(d, trials),
        GaussianNoise(SIGMA),
        n0=20,
        n=300,
        alpha=alpha,
        batch_size=3000,
        generator=generators(trials),
    )
    too_large = sum(c.radius > d for c in certs) / trials
    assert too_large <= alpha
    assert all(c.prediction in (1, ABSTAIN) for c in certs)


def test_points_on_the_boundary_abstain(linear):
    model, at = linear
    alpha, trials = 0.01, 300
    certs = cohen_certify(
        model,
        at(0.0, trials),
        GaussianNoise(SIGMA),
        n0=50,
        n=2_000,
        alpha=alpha,
        batch_size=4000,
        generator=generators(trials),
    )
    answered = sum(c.prediction != ABSTAIN for c in certs)
    assert answered <= 2 * alpha * trials
    assert all(c.radius == 0 for c in certs if c.prediction == ABSTAIN)


def test_predict_answers_far_from_the_boundary_and_abstains_on_it(linear):
    model, at = linear
    noise = GaussianNoise(SIGMA)
    assert cohen_predict(model, at(-0.6), noise, n=1000, alpha=0.001, generator=generators(1)) == [0]
    trials, alpha = 300, 0.01
    answers = cohen_predict(
        model, at(0.0, trials), noise, n=500, alpha=alpha, batch_size=5000, generator=generators(trials)
    )
    assert sum(a != ABSTAIN for a in answers) <= 2 * alpha * trials


@pytest.mark.parametrize("n0, n, batch_size", [(10, 100, 64), (10, 300, 1000), (100, 1000, 100)])
def test_certificates_do_not_depend_on_how_images_are_grouped(n0, n, batch_size):
    model, noise = tiny_classifier().eval(), GaussianNoise(0.25)
    x = torch.rand(5, 1, 8, 8)
    together = cohen_certify(model, x, noise, n0=n0, n=n, batch_size=batch_size, generator=generators(5))
    alone = [
        cohen_certify(model, x[i : i + 1], noise, n0=n0, n=n, batch_size=batch_size, generator=generators(1, i))[0]
        for i in range(5)
    ]
    assert together == alone


def test_same_generator_seed_reproduces_and_model_mode_is_restored():
    model, noise = tiny_classifier().train(), GaussianNoise(0.25)
    x = torch.rand(2, 1, 8, 8)
    first = cohen_certify(model, x, noise, n0=10, n=200, generator=torch.Generator().manual_seed(3))
    second = cohen_certify(model, x, noise, n0=10, n=200, generator=torch.Generator().manual_seed(3))
    assert first == second
    assert model.training


def test_smoothed_classifier_single_image_api(linear):
    model, at = linear
    smoothed = SmoothedClassifier(model, GaussianNoise(SIGMA))
    cert = smoothed.certify(at(0.5)[0], n0=100, n=10_000, generator=torch.Generator().manual_seed(0))
    assert cert.prediction == 1 and 0 < cert.radius <= 0.5
    assert smoothed.predict(at(0.5)[0], n=1000, generator=torch.Generator().manual_seed(0)) == 1
    with pytest.raises(ValueError, match=r"one image of shape \(C, H, W\)"):
        smoothed.certify(at(0.5))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(alpha=0.0), "alpha must be a finite number in"),
        (dict(alpha=1.5), "alpha must be a finite number in"),
        (dict(n0=200, n=100), "n0 must not exceed n"),
        (dict(n=0), "n must be a positive integer"),
        (dict(batch_size=0), "batch_size must be a positive integer"),
    ],
)
def test_bad_sampling_arguments_are_named(linear, kwargs, message):
    model, at = linear
    with pytest.raises(ValueError, match=message):
        cohen_certify(model, at(0.2), GaussianNoise(SIGMA), **kwargs)


class Scores(torch.nn.Module):
    """A broken model: one score per image instead of (batch, num_classes) logits."""

    def forward(self, x):
        return x.flatten(1).sum(1)


def test_bad_images_sigma_and_models_are_named(linear):
    model, at = linear
    noise = GaussianNoise(SIGMA)
    with pytest.raises(ValueError, match=r"shape \(1, 4, 4\).*expected float images \(N, C, H, W\)"):
        cohen_certify(model, at(0.2)[0], noise, n=100)
    with pytest.raises(ValueError, match=r"got values in \[2, 2\].*with values in \[0, 1\]"):
        cohen_certify(model, at(0.2) * 0 + 2.0, noise, n=100)
    for sigma in (0, -0.5):
        with pytest.raises(ValueError, match="sigma must be a finite number > 0"):
            GaussianNoise(sigma)
    with pytest.raises(ValueError, match=r"logits of shape \(batch, num_classes\).*inputs got \(10,\)"):
        cohen_certify(Scores(), at(0.2), noise, n0=10, n=100, batch_size=100)
    with pytest.raises(ValueError, match="one per image"):
        cohen_certify(model, at(0.2, 2), noise, n=100, generator=generators(3))


def test_too_few_samples_for_alpha_warns(linear):
    model, at = linear
    with pytest.warns(UserWarning, match="too small for alpha"):
        certs = cohen_certify(model, at(1.0), GaussianNoise(SIGMA), n0=5, n=5, alpha=0.001)
    assert certs[0].prediction == ABSTAIN
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cohen_certify(model, at(1.0), GaussianNoise(SIGMA), n0=10, n=10, alpha=0.001)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="Requires: CUDA")
def test_follows_the_input_device(linear):
    model, at = linear
    model = model.cuda()
    gens = [torch.Generator(device="cuda").manual_seed(0)]
    cert = cohen_certify(model, at(0.4).cuda(), GaussianNoise(SIGMA), n=10_000, generator=gens)[0]
    assert cert.prediction == 1 and cert.radius <= 0.4


def test_on_pass_reports_each_forward_pass_and_the_counts_do_not_change():
    """Issue 21: progress moves per pass. One call per pass, whose sizes sum to every sample drawn."""
    model, x = tiny_classifier(num_classes=3), torch.rand(3, 1, 8, 8)
    noise = GaussianNoise(0.25)
    passes: list[int] = []
    seeded = [torch.Generator().manual_seed(i) for i in range(3)]
    counts = sample_counts(model, x, noise, 70, batch_size=32, generator=seeded, on_pass=passes.append)
    assert passes == [32, 32, 6] * 3  # one image at a time in batch-size chunks, as _plan splits them
    reseeded = [torch.Generator().manual_seed(i) for i in range(3)]
    again = sample_counts(model, x, noise, 70, batch_size=32, generator=reseeded)
    assert torch.equal(counts, again)


def test_reporting_passes_reaches_calls_inside_a_certifier():
    """The runner's bar hears the passes of a certifier that calls sample_counts itself (CERTIFY: n0 then n)."""
    from rs_plugins.certify.sampling import reporting_passes

    passes: list[int] = []
    with reporting_passes(passes.append):
        cohen_certify(tiny_classifier(num_classes=3), torch.rand(2, 1, 8, 8), GaussianNoise(0.25), n0=10, n=50,
                      batch_size=25)  # fmt: skip
    assert sum(passes) == 2 * (10 + 50)
    sample_counts(tiny_classifier(num_classes=3), torch.rand(1, 1, 8, 8), GaussianNoise(0.25), 5, batch_size=5)
    assert sum(passes) == 120  # none reported outside the block
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_noise_is_drawn_and_added_in_float32_for_low_precision_images(dtype):
    """Issue 17 item 4: the sampler sees float32 images, and the model gets x + noise rounded once, after adding."""
    seen = []

    class Spy(GaussianNoise):
        def sample(self, x, *, generator=None):
            seen.append(x.dtype)
            return super().sample(x, generator=generator)

    w = torch.tensor([1.0, -1.0] * 8).reshape(1, 4, 4)
    model = LinearClassifier(w, b=-float((w * 0.5).sum()) + 0.3)
    x = torch.full((2, 1, 4, 4), 0.5).to(dtype)
    generators = [torch.Generator().manual_seed(i) for i in range(2)]
    counts = sample_counts(model, x, Spy(0.5), 64, batch_size=64, generator=generators)
    assert set(seen) == {torch.float32}
    expected = []
    for i in range(2):
        clean = x[i : i + 1].float().expand(64, 1, 4, 4)
        noisy = GaussianNoise(0.5).sample(clean, generator=torch.Generator().manual_seed(i))
        expected.append(torch.bincount(model(noisy.to(dtype)).argmax(1), minlength=2))
    assert torch.equal(counts, torch.stack(expected))
