"""``rs-plugins zoo``: the papers' released smoothed models, listed, and certified beside their published rows."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

from .. import file_checks
from ..errors import SourceError
from ..sources import fetch, zoo
from ..sources.zoo.compare import format_comparison
from . import shared
from .shared import positive_int

FORMATS = ("text", "markdown")


def add_zoo(sub) -> None:
    """Add ``zoo`` (list) and ``zoo certify NAME`` to the ``rs-plugins`` sub-parsers."""
    p = sub.add_parser("zoo", help="the papers' released smoothed models: list them, or certify one beside its "
                       "published row")  # fmt: skip
    p.add_argument("--format", choices=FORMATS, default="text", help="text (default) or markdown (docs/zoo.md)")
    p.set_defaults(func=cmd_zoo)
    actions = p.add_subparsers(dest="zoo_command", metavar="{certify}")
    c = actions.add_parser("certify", help="download what is missing, certify with the authors' protocol, compare")
    c.add_argument("name", help="a zoo entry (rs-plugins zoo lists them)")
    c.add_argument("--data", help="the test set (default: the entry's, downloaded into the cache; ImageNet: give "
                   "imagenet:ROOT)")  # fmt: skip
    c.add_argument("--sigma", type=shared.positive_float, help="noise level (default: the one it was trained for)")
    c.add_argument("--n0", type=positive_int, help="selection samples (default: the authors')")
    c.add_argument("--n", type=positive_int, help="estimation samples (default: the authors' N)")
    c.add_argument("--alpha", type=shared.probability_arg, help="failure probability (default: the authors')")
    c.add_argument("--start", type=int, help="first data-set index (default: the authors')")
    c.add_argument("--every", type=positive_int, help="every k-th image (default: the authors' subset)")
    c.add_argument("--max", type=positive_int, help="stop before this data-set index")
    c.add_argument("--limit", type=positive_int, help="at most this many images (default: the authors')")
    c.add_argument("--batch-size", help="samples per forward pass, or auto (default: the authors' batch)")
    c.add_argument("--device", default="auto", help="auto (CUDA if present) | cpu | cuda | cuda:N")
    c.add_argument("--seed", type=int, default=0, help=shared.SEED_HELP)
    c.add_argument("--checkpoint", help="the entry's file in its authors' layout, instead of downloading it")
    c.add_argument(file_checks.TRUST_FLAG, action="store_true", help="allow a checkpoint that needs full unpickling")
    c.add_argument("--zoo-dir", help="the authors' archive, unpacked: nothing is downloaded")
    c.add_argument("--out", help="results TSV (default zoo-NAME.tsv); rerunning resumes it")
    c.add_argument("--no-progress", action="store_true", help="hide progress bars")
    shared.add_offline(c)
    c.set_defaults(func=cmd_zoo_certify)


def published_cell(found: zoo.ZooEntry) -> str:
    """The published row in one cell: ACR and accuracy at the radii, over how many images."""
    row = found.published
    if row is None:
        return "none published"
    accuracies = " / ".join(f"{a:g}" for a in row.accuracy.values())
    radii = " / ".join(f"{r:g}" for r in row.accuracy)
    acr = f"ACR {row.acr:.3f}; " if row.acr is not None else ""
    return f"{acr}{accuracies} % at r = {radii} ({row.images} images)"


def files_cell(found: zoo.ZooEntry, *, cache: bool = True) -> str:
    """How the files are had, whether their hash is verified, and (``cache``) whether they are in the cache."""
    if found.needs:
        return "needs " + found.needs.split(" (")[0]
    if found.archive is None:
        return "not published"
    if not found.downloadable:
        return "manual download (--zoo-dir / --checkpoint)"
    cached = zoo.cached_entry(found) if cache else None
    verified = "verified" if found.sha256 or found.source.get("sha256") else "unverified"
    if cached:
        size = Path(cached["path"]).stat().st_size if Path(cached["path"]).is_file() else 0
        return f"cached, {size / 2**20:.1f} MiB, {verified}"
    return f"downloads, {verified}"


YEAR = re.compile(r"(19|20)\d\d")
TEXT_RADII = (0.0, 0.5, 1.0, 1.5, 2.0)  # on every published grid (CIFAR's steps of 0.25, ImageNet's of 0.5)


def zoo_table(fmt: str = "text") -> str:
    """Every entry. Markdown: name, paper, data set, architecture, sigma, the published row, files. Text (about a
    terminal's width): name, paper, data set, network, sigma, the published ACR and accuracy at r = 0, 0.5, 1, 1.5,
    2 over its images, and the files (how they are had, in the cache with their size, verified or not)."""
    if fmt == "markdown":
        head = ["name", "paper", "data", "architecture", "σ", "published row", "files"]
        rows = [[e.name, e.paper, e.dataset, e.architecture, "-" if e.sigma is None else f"{e.sigma:g}",
                 published_cell(e), files_cell(e, cache=False)] for e in zoo.ENTRIES]  # fmt: skip
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"
    head = ["name", "paper", "data", "network", "σ", "ACR", *(f"r={r:g}" for r in TEXT_RADII), "images", "files"]
    rows = []
    for e in zoo.ENTRIES:
        row = e.published
        cells = [f"{row.accuracy[r]:.1f}" if row and r in row.accuracy else "-" for r in TEXT_RADII]
        acr = f"{row.acr:.3f}" if row and row.acr is not None else "-"
        paper = f"{e.paper.split()[0]} {YEAR.search(e.paper)[0]}"  # "Cohen et al., ICML 2019": "Cohen 2019"
        rows.append([e.name, paper, e.dataset, e.architecture.removeprefix("cifar_"),
                     "-" if e.sigma is None else f"{e.sigma:g}", acr, *cells, str(row.images) if row else "-",
                     files_cell(e)])  # fmt: skip
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    left = (0, 1, 2, 3, len(head) - 1)
    lines = ["  ".join(v.ljust(w) if i in left else v.rjust(w)
                       for i, (v, w) in enumerate(zip(r, widths))).rstrip() for r in [head, *rows]]  # fmt: skip
    return "\n".join(lines) + "\n"


def cmd_zoo(args: argparse.Namespace) -> int:
    print(zoo_table(args.format), end="")
    if args.format == "text":
        print(f"published rows: certified accuracy (%) at l2 radius r, from the authors' logs or READMEs; "
              f"cache: {fetch.home() / 'zoo'}; sources and layouts: docs/zoo.md")  # fmt: skip
    return 0


def certify_argv(found: zoo.ZooEntry, args: argparse.Namespace) -> list[str]:
    """The ``rs-plugins certify`` command that follows the authors' protocol, with the user's overrides."""
    if found.needs:
        raise SourceError(f"zoo certify {found.name}: the entry needs {found.needs}, which this rs-plugins lacks")
    if found.kind == "denoiser":
        model = found.classifier if ":" in (found.classifier or "") else f"zoo:{found.classifier}"
        denoiser, sigma = f"{found.architecture}:zoo:{found.name}", found.sigma
    else:
        model, denoiser, sigma = f"zoo:{found.name}", None, found.sigma
    sigma = args.sigma or sigma
    if sigma is None:
        raise ValueError(f"zoo certify {found.name}: it was not trained for one noise level; give --sigma (or, for a "
                         "classifier trained without noise, certify one of its denoisers: rs-plugins zoo lists them)")
    data = args.data or found.dataset
    if data == "imagenet":
        raise SourceError(f"zoo certify {found.name}: give --data imagenet:ROOT (ImageNet's validation images in "
                          "their 1000 class folders; its licence forbids downloading it for you)")  # fmt: skip
    p = found.protocol
    argv = ["certify", "--model", model, "--data", data, "--sigma", f"{sigma:g}",
            "--n0", str(args.n0 or p.n0), "--n", str(args.n or p.n), "--alpha", f"{args.alpha or p.alpha:g}",
            "--start", str(p.start if args.start is None else args.start), "--every", str(args.every or p.every),
            "--batch-size", str(args.batch_size or p.batch_size), "--device", args.device, "--seed", str(args.seed),
            "--out", args.out or f"zoo-{found.name}.tsv"]  # fmt: skip
    limit = args.limit or p.limit
    argv += ["--limit", str(limit)] if limit else []
    argv += ["--max", str(args.max)] if args.max else []
    argv += ["--denoiser", denoiser] if denoiser else []
    argv += [v for option in found.denoiser_options for v in ("--denoiser-option", option)]
    argv += ["--checkpoint", args.checkpoint] if args.checkpoint else []
    argv += [file_checks.TRUST_FLAG] if args.trust_model_file else []
    argv += ["--no-progress"] if args.no_progress else []
    return argv


def cmd_zoo_certify(args: argparse.Namespace) -> int:
    from ..results.files import read_results
    from . import build_parser
    from .certify import cmd_certify

    found = zoo.entry(args.name, option="zoo certify")
    argv = certify_argv(found, args)
    p = found.protocol
    print(f"zoo certify {found.name}: {found.paper}; the authors' protocol: {p.describe()}")
    print("rs-plugins " + " ".join(argv), flush=True)
    code = cmd_certify(build_parser().parse_args(argv))
    if int(os.environ.get("RANK", "0")):  # under torchrun, the main process reports the merged rows
        return code
    for record in fetch.fetched():
        if record.get("sha256"):
            how = "verified against the published hash" if record.get("verified") else (
                "unverified: the authors publish no hash; recorded with the results")  # fmt: skip
            print(f"{record['path']}: SHA-256 {record['sha256']} ({how})")
    out = argv[argv.index("--out") + 1]
    if found.published is not None:
        published = zoo.describe(found)["published"]
        print(format_comparison(read_results(out), published, title=f"{found.name} beside the published row"), end="")
        changed = [f"{flag} {value}" for flag, value, theirs in (
            ("--n", args.n, p.n), ("--n0", args.n0, p.n0), ("--alpha", args.alpha, p.alpha),
            ("--start", args.start, p.start), ("--every", args.every, p.every), ("--limit", args.limit, p.limit),
            ("--max", args.max, None), ("--sigma", args.sigma, found.sigma)) if value is not None and value != theirs]
        if changed:  # fmt: skip (the table above)
            print(f"note: not the authors' protocol ({', '.join(changed)}): other images or a smaller N change what "
                  "the numbers mean; the intervals account only for the number of images")
        print()
    else:
        print(f"{found.name}: no published row to compare with ({found.notes or 'see docs/zoo.md'})")
    return code
