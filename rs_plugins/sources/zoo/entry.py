"""What the zoo knows about one of the authors' released models: where it is published, how it was saved, what it
was trained for, how the authors certified it, and the row they published."""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import locations

CIFAR10_LABELS = "torchvision CIFAR-10 order (airplane, automobile, bird, ..., truck)"
IMAGENET_LABELS = "ImageNet synsets in sorted folder order (torchvision ImageFolder over val/ sorted into 1000 folders)"


@dataclass(frozen=True)
class Protocol:
    """How the authors certified it: Cohen et al.'s CERTIFY with these n0, N and alpha over these test images
    (``start``, every ``every``-th, at most ``limit``), as ``rs-plugins certify`` options."""

    n0: int = 100
    n: int = 100_000
    alpha: float = 0.001
    start: int = 0
    every: int = 1
    limit: int | None = None
    batch_size: int = 1000  # the speed's, not the result's (the authors used 400 for Cohen's and SmoothAdv's)

    def describe(self) -> str:
        subset = f"every {self.every}th image" if self.every > 1 else "all images"
        if self.start or self.limit:
            subset = f"{self.limit or 'all'} images from index {self.start}"
        return f"n0={self.n0}, N={self.n:,}, alpha={self.alpha:g}, {subset}"


@dataclass(frozen=True)
class Published:
    """The certified-accuracy row the authors published: accuracy (percent) at each l2 radius, over ``images``
    test images, with its ACR where known, and where it comes from (``source``)."""

    source: str
    images: int
    accuracy: dict[float, float]
    acr: float | None = None


@dataclass(frozen=True)
class ZooEntry:
    """One released model (a smoothed classifier's base network, or a denoiser), as data.

    Args:
        name: ``--model zoo:NAME`` (``--denoiser dncnn:zoo:NAME`` for a denoiser).
        paper: who and where, e.g. ``"Cohen et al., ICML 2019"``.
        dataset: ``cifar10`` or ``imagenet``: what it classifies, and the ``--data`` ``zoo certify`` uses.
        architecture: ``cifar_resnet110``, ``resnet50``, ``dncnn`` or ``diffusion``.
        sigma: the Gaussian noise level it was trained for (None: trained without noise).
        layout: how the authors saved the weights (see ``layouts.LAYOUTS``).
        normalization: the authors' first layer: ``("standardize", mean, std)`` (Cohen's ``NormalizeLayer``),
            ``("center", mean)`` (Salman et al.'s ``InputCenterLayer``), or None (none: MACER, denoisers).
        archive: key of ``locations.ARCHIVES`` (where it is published); None if the files are not published.
        member: the checkpoint's path inside the archive ("" when the download is the checkpoint itself).
        sha256: the checkpoint's SHA-256 where the authors publish one.
        labels: the label order the logits follow.
        kind: ``classifier`` or ``denoiser``.
        classifier: for a denoiser, the classifier its row was certified with: a zoo entry's name, or a ``--model``
            source (``hf:...``, ``timm:...``).
        denoiser_options: ``--denoiser-option`` values the authors' protocol needs (e.g. ``classifier_size=224``).
        protocol: how the authors certified it.
        published: the authors' row, or None where none is published.
        needs: what this rs-plugins lacks to run it ("" if nothing), e.g. a checkpoint converter.
        notes: anything a user must know (an unverified archive path, a normalisation pitfall).
    """

    name: str
    paper: str
    dataset: str
    architecture: str
    sigma: float | None
    layout: str
    normalization: tuple | None
    archive: str | None
    member: str | None
    sha256: str | None = None
    labels: str = CIFAR10_LABELS
    kind: str = "classifier"
    classifier: str | None = None
    denoiser_options: tuple[str, ...] = ()
    protocol: Protocol = field(default_factory=Protocol)
    published: Published | None = None
    needs: str = ""
    notes: str = ""

    @property
    def source(self) -> dict:
        """The archive's record in ``locations.ARCHIVES`` ({} if the files are not published)."""
        return locations.ARCHIVES.get(self.archive, {}) if self.archive else {}

    @property
    def downloadable(self) -> bool:
        """Whether a program can download it (a direct URL or a Google Drive file id)."""
        return bool(self.source.get("url") or self.source.get("drive"))

    def availability(self) -> str:
        """How the files can be had, in a few words, for ``rs-plugins zoo``."""
        if self.archive is None:
            return "not published (the authors released logs only)"
        if not self.downloadable:
            return f"published, not downloadable by a program: {self.source.get('page')}"
        return "downloads on first use"
