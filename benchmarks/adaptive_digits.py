"""Adaptive smoothing on the bundled digits: does the adaptive mixer beat fixed α at equal robust accuracy?

Per seed: g = SmallCNN trained plainly (cross-entropy on clean digits: accurate, not robust); h = SmallCNN trained
with Consistency at sigma 0.5 (the techniques benchmark's MNIST options); the mixing network trained with
``train_mixer`` (the paper's recipe, scaled down). Every mixture -- fixed α on a grid and the adaptive mixer at a
few α ranges -- is evaluated on the 360 held-out digits: clean accuracy, and robust accuracy under an adaptive
attack through the whole mixture (an image counts as robust only if both APGD-CE and APGD-DLR fail, l2, the
mixing network differentiated through). The adaptive point is compared with the fixed-α curve interpolated at the
same robust accuracy. Trained models are cached in --out-dir, so a rerun only re-evaluates.

    python benchmarks/adaptive_digits.py --seeds 0 1 --out-dir results/adaptive_digits

Writes ``results.csv`` (one row per seed and mixer; for the adaptive mixer ``alpha`` is min/mean/max of its eval-mode
α(x) on the clean test digits), ``comparison.csv`` and ``tradeoff.png``.
"""

from __future__ import annotations

import argparse
import csv
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchattacks

import rs_plugins
from rs_plugins.builtin.adaptive import AdaptiveMixer, MixedClassifier
from rs_plugins.nets import SmallCNN
from rs_plugins.train.config import FINAL_MODEL, TrainConfig
from rs_plugins.train.loop import train
from rs_plugins.train.mixer import MixerTrainConfig, train_mixer
from rs_plugins.types import LossOutput

ALPHAS = (0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
RANGES = ((0.5, 0.99),)  # the adaptive mixer's eval-mode [alpha_min, alpha_max]


class PlainCrossEntropy:
    """Cross-entropy on clean images: the accurate, non-robust base."""

    def __call__(self, model, x, y, noise, *, progress):
        loss = F.cross_entropy(model(x), y)
        return LossOutput(loss, {"xent": loss.detach()})


def base(path: Path, loss, seed: int, epochs: int, train_set) -> SmallCNN:
    torch.manual_seed(seed)
    model = SmallCNN()
    config = TrainConfig(epochs=epochs, batch_size=64, lr=0.05, lr_step=max(1, epochs // 3), seed=seed)
    if not (path / FINAL_MODEL).exists():
        train(model, train_set, loss, rs_plugins.Host().noise("gaussian", sigma=0.5), config=config,
              checkpoint_dir=path, progress=False)  # fmt: skip
    model.load_state_dict(torch.load(path / FINAL_MODEL, weights_only=True))
    return model.eval()


def robust_correct(model, x, y, eps: float, steps: int, seed: int) -> torch.Tensor:
    """Per image: correct on x and under both APGD-CE and APGD-DLR (l2, eps) through ``model``."""
    model.eval()
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    for loss in ("ce", "dlr"):
        attack = torchattacks.APGD(model, norm="L2", eps=eps, steps=steps, n_restarts=1, loss=loss, seed=seed)
        adv = attack(x, y)
        with torch.no_grad():
            correct &= model(adv).argmax(1) == y
    return correct


def evaluate(model, x, y, eps, steps, seed) -> tuple[float, float]:
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean().item()
    return clean, robust_correct(model, x, y, eps, steps, seed).float().mean().item()


def interpolate_clean(curve: list[tuple[float, float]], robust: float) -> float:
    """Clean accuracy of the fixed-α curve at ``robust`` (the upper envelope, linearly interpolated); NaN outside."""
    points = sorted(curve)
    envelope = []
    for r, _ in points:  # best clean accuracy at robust accuracy >= r
        envelope.append((r, max(c2 for r2, c2 in points if r2 >= r)))
    rs, cs = zip(*envelope)
    if robust < rs[0] or robust > rs[-1]:
        return float("nan")
    return float(np.interp(robust, rs, cs))


def standard_error(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 0.0) / n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, default=20, help="base-model epochs (default 20)")
    parser.add_argument("--mixer-epochs", type=int, nargs="+", default=[4, 15], help="mixing-network runs (4 15)")
    parser.add_argument("--eps", type=float, default=0.5, help="l2 radius of training and evaluation (default 0.5)")
    parser.add_argument("--steps", type=int, default=20, help="APGD steps of the evaluation attack (default 20)")
    parser.add_argument("--attack-steps", type=int, default=5, help="chi2 mean of the training attacks' steps (5)")
    parser.add_argument("--targets", type=int, default=1, help="targeted training attacks per batch (default 1)")
    parser.add_argument("--extra-clean", type=int, default=2, help="extra clean images per batch, in batches (2)")
    parser.add_argument("--out-dir", default="results/adaptive_digits")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    host = rs_plugins.Host()
    train_set = host.load_data(rs_plugins.DataRequest("digits", "train"))
    test_set = host.load_data(rs_plugins.DataRequest("digits", "test"))
    x = torch.stack([test_set[i][0] for i in range(len(test_set))])
    y = torch.tensor([int(test_set[i][1]) for i in range(len(test_set))])
    n = len(y)
    rows, comparison = [], []
    started = time.perf_counter()
    for seed in args.seeds:
        g = base(out / f"std_seed{seed}", PlainCrossEntropy(), seed, args.epochs, train_set)
        consistency = host.loss("consistency", m=2, lbd=5, eta=0.5)
        h = base(out / f"rob_seed{seed}", consistency, seed, args.epochs, train_set)
        curve, by_alpha = [], {}
        for alpha in ALPHAS:
            clean, robust = evaluate(MixedClassifier([g, h], alpha=alpha), x, y, args.eps, args.steps, seed)
            curve.append((robust, clean))
            by_alpha[alpha] = (clean, robust)
            rows.append({"seed": seed, "mixer": "mix", "alpha": alpha, "clean": clean, "robust": robust})
            print(f"seed {seed} mix alpha={alpha:<5} clean {clean:.3f} robust {robust:.3f}", flush=True)
        for alpha_min, alpha_max in RANGES:
            # Head-room: an oracle alpha(x) = alpha_min on clean inputs, alpha_max under attack.
            for alpha in (alpha_min, alpha_max):
                if alpha not in by_alpha:  # a point of the fixed-alpha curve too
                    by_alpha[alpha] = evaluate(MixedClassifier([g, h], alpha=alpha), x, y, args.eps, args.steps, seed)
                    curve.append(by_alpha[alpha][::-1])
                    rows.append({"seed": seed, "mixer": "mix", "alpha": alpha, "clean": by_alpha[alpha][0],
                                 "robust": by_alpha[alpha][1]})  # fmt: skip
            clean, robust = by_alpha[alpha_min][0], by_alpha[alpha_max][1]
            fixed = interpolate_clean(curve, robust)
            label = f"oracle [{alpha_min}, {alpha_max}]"
            se = math.hypot(standard_error(clean, n), standard_error(fixed, n))
            comparison.append({"seed": seed, "mixer": label, "epochs": "", "alpha_sep_train": "", "alpha_std_test": "",
                               "robust": robust, "clean": clean, "fixed_alpha_clean_at_same_robust": fixed,
                               "gain": clean - fixed, "gain_se": se})  # fmt: skip
            print(f"seed {seed} {label}: clean {clean:.3f} robust {robust:.3f}; gain {clean - fixed:+.3f}", flush=True)
            for epochs in args.mixer_epochs:
                torch.manual_seed(seed)
                mixer = AdaptiveMixer([g, h], alpha_min=alpha_min, alpha_max=alpha_max, net="small", width=16,
                                      probe_size=8)  # fmt: skip
                config = MixerTrainConfig(epochs=epochs, batch_size=50, lr=2e-3, accumulate=2, eps=args.eps,
                                          norm="L2", attack_steps=args.attack_steps, targets=args.targets,
                                          extra_clean=args.extra_clean, seed=seed)  # fmt: skip
                directory = out / f"mixer_seed{seed}_eps{args.eps}_{alpha_min}_{alpha_max}_ep{epochs}"
                log = train_mixer(mixer, train_set, config=config, checkpoint_dir=directory, progress=False)
                separation = log[-1]["alpha_attacked"] - log[-1]["alpha_clean"]
                clean, robust = evaluate(mixer.eval(), x, y, args.eps, args.steps, seed)
                with torch.no_grad():
                    mixer(x)
                    alpha = mixer.alpha(mixer.last_gamma)  # the eval-mode alpha(x) on the clean test digits
                label = f"adaptive [{alpha_min}, {alpha_max}] {epochs} ep"
                spread = f"{alpha.min():.3f}/{alpha.mean():.3f}/{alpha.max():.3f}"
                rows.append({"seed": seed, "mixer": label, "alpha": spread, "clean": clean, "robust": robust})
                fixed = interpolate_clean(curve, robust)
                se = math.hypot(standard_error(clean, n), standard_error(fixed, n))
                comparison.append({"seed": seed, "mixer": label, "epochs": epochs, "alpha_sep_train": separation,
                                   "alpha_std_test": float(alpha.std()), "robust": robust, "clean": clean,
                                   "fixed_alpha_clean_at_same_robust": fixed, "gain": clean - fixed,
                                   "gain_se": se})  # fmt: skip
                print(f"seed {seed} {label}: train alpha_attacked - alpha_clean {separation:+.3f} "
                      f"(identical share {log[-1]['identical_share']:.3f}); test alpha(x) min/mean/max {spread} "
                      f"std {float(alpha.std()):.3f}; clean {clean:.3f} robust {robust:.3f}; fixed alpha at that "
                      f"robust accuracy: clean {fixed:.3f} (gain {clean - fixed:+.3f} +- {se:.3f})",
                      flush=True)  # fmt: skip
    for name, table in (("results.csv", rows), ("comparison.csv", comparison)):
        with open(out / name, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(table[0]))
            writer.writeheader()
            writer.writerows(table)
    plot(rows, out / "tradeoff.png", args)
    print(f"{time.perf_counter() - started:.0f} s on {platform.processor() or platform.machine()}, "
          f"{args.threads} thread(s); torch {torch.__version__}")  # fmt: skip


def plot(rows, path: Path, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for i, seed in enumerate(args.seeds):
        fixed = [r for r in rows if r["seed"] == seed and r["mixer"] == "mix"]
        ax.plot([r["robust"] for r in fixed], [r["clean"] for r in fixed], "o-", color=f"C{i}",
                label=f"fixed alpha, seed {seed}", alpha=0.8)  # fmt: skip
        for r in rows:
            if r["seed"] == seed and r["mixer"] != "mix":
                marker = "*" if r["mixer"].endswith(f" {max(args.mixer_epochs)} ep") else "P"
                label = f"{r['mixer']}, seed {seed}"
                ax.plot(r["robust"], r["clean"], marker, color=f"C{i}", markersize=12, label=label)
    ax.set_xlabel(f"robust accuracy (APGD-CE and -DLR, l2 eps={args.eps}, through the mixture)")
    ax.set_ylabel("clean accuracy")
    ax.set_title("digits: g plain SmallCNN, h Consistency sigma=0.5", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
