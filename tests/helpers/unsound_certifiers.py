"""Deliberately unsound certifiers: the known pitfalls the soundness bench must catch (issue 28).

Each one is a plugin component (``Host(plugins=[unsound_certifiers])``), so the CLI's ``check-certifier`` can be
pointed at it too. Never use them: every one certifies more than its alpha allows.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import norm

import rs_plugins
from rs_plugins.certify.sampling import per_image_generators, sample_counts
from rs_plugins.certify.stats import clopper_pearson_lower
from rs_plugins.types import ABSTAIN, Certificate, CertifierSpec


def _cohen(top, hits, n, alpha, noise, samples):
    p = clopper_pearson_lower(hits, n, alpha)
    radii = noise.radius(torch.as_tensor(p, dtype=torch.float64)).tolist()
    return [Certificate(int(c), r, float(q), samples) if q >= 0.5 else Certificate(ABSTAIN, 0.0, float(q), samples)
            for c, r, q in zip(top, radii, p)]


class LargestOfLooks:
    """Unsound: Cohen's bound at n/8, n/4, n/2 and n cumulative samples, each at the full alpha, and the largest radius
    reported (looking repeatedly without spending alpha across the looks)."""

    def certify(self, model, x, noise, *, n0, n, alpha, batch_size, generator=None):
        generators = per_image_generators(generator, len(x))
        top = sample_counts(model, x, noise, n0, batch_size=batch_size, generator=generators).argmax(1)
        sizes = [max(1, n // 8), max(1, n // 8), max(1, n // 4), n - 2 * max(1, n // 8) - max(1, n // 4)]
        hits, best = np.zeros(len(x)), np.zeros(len(x))
        drawn = 0
        for size in sizes:
            counts = sample_counts(model, x, noise, size, batch_size=batch_size, generator=generators)
            hits += counts.gather(1, top[:, None]).squeeze(1).numpy()
            drawn += size
            best = np.maximum(best, clopper_pearson_lower(hits, drawn, alpha))
        radii = noise.radius(torch.as_tensor(best, dtype=torch.float64)).tolist()
        return [Certificate(int(c), r, float(p)) if p >= 0.5 else Certificate(ABSTAIN, 0.0, float(p))
                for c, r, p in zip(top.tolist(), radii, best)]


class ReusedSelection:
    """Unsound: the class is picked on the same samples the bound is computed from (no separate n0 pass)."""

    def certify(self, model, x, noise, *, n0, n, alpha, batch_size, generator=None):
        counts = sample_counts(model, x, noise, n, batch_size=batch_size, generator=generator)
        top = counts.argmax(1)
        return _cohen(top.tolist(), counts.gather(1, top[:, None]).squeeze(1).numpy(), n, alpha, noise, n)


class EmpiricalRunnerUp:
    """Unsound: sigma/2 (Phi^-1(p_A lower) - Phi^-1(p_B)) with p_B the runner-up's empirical share, no bound on the
    other classes."""

    def certify(self, model, x, noise, *, n0, n, alpha, batch_size, generator=None):
        generators = per_image_generators(generator, len(x))
        top = sample_counts(model, x, noise, n0, batch_size=batch_size, generator=generators).argmax(1)
        counts = sample_counts(model, x, noise, n, batch_size=batch_size, generator=generators)
        p_a = clopper_pearson_lower(counts.gather(1, top[:, None]).squeeze(1).numpy(), n, alpha)
        others = counts.clone()
        others.scatter_(1, top[:, None], -1)
        p_b = np.maximum(others.max(1).values.numpy() / n, 1e-12)
        radii = noise.sigma / 2 * (norm.ppf(p_a) - norm.ppf(p_b))
        return [Certificate(int(c), float(r), float(p)) if r > 0 else Certificate(ABSTAIN, 0.0, float(p))
                for c, r, p in zip(top.tolist(), radii, p_a)]


UNSOUND = {"largest_of_looks": LargestOfLooks, "reused_selection": ReusedSelection,
           "empirical_runner_up": EmpiricalRunnerUp}


@rs_plugins.hookimpl
def rs_certifiers():
    for name, build in UNSOUND.items():
        noises = ("gaussian",) if name == "empirical_runner_up" else ()
        yield CertifierSpec(name, build, "deliberately unsound (tests only)", noises=noises)
