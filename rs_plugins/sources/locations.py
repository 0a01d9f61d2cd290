"""Every address rs-plugins downloads from, as data in one place: the data sets' mirrors, the Google Drive download
endpoint, and the archives in which the papers' authors publish their smoothed models (``rs-plugins zoo``).

Nothing else in the package spells a URL or a Google Drive id, so one monkeypatch of this module points every
download path at another server (the tests serve synthetic files in the authors' layouts from 127.0.0.1), and
a reader can audit where anything comes from. RobustBench's own Google Drive ids stay in robustbench's model
table; only the endpoint they are fetched from is here (``GOOGLE_DRIVE``).
"""

from __future__ import annotations

GOOGLE_DRIVE = "https://drive.google.com/uc?export=download&id={id}"
"""A Google Drive file by id. Large files answer with a virus-scan page holding a confirmation form, which
``fetch`` follows; a quota page ("Too many users have viewed or downloaded this file recently") is reported as
such."""

DATASETS = {
    # torchvision's own addresses; torchvision checks each file's MD5 against the published data set's.
    "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    "cifar100": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    "mnist": ["https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"],
}
"""The data sets ``--data NAME`` downloads through torchvision: a URL (CIFAR) or a list of mirrors (MNIST)."""

IMAGENET = "https://image-net.org/download.php"
"""Where to request ImageNet (ILSVRC2012): its licence forbids redistribution, so nothing downloads it."""

ARCHIVES = {
    "cohen2019": {
        "drive": "1h_TpbXm5haY5f-l4--IKylmdz6tvPoR4",
        "page": "https://github.com/locuslab/smoothing#getting-started",
        "holds": "a tar of models/{cifar10/resnet110,imagenet/resnet50}/noise_*/checkpoint.pth.tar",
    },
    "salman2019": {
        "drive": "1GH7OeKUzOGiouKhendC-501pLYNRvU8c",
        "page": "https://github.com/Hadisalman/smoothing-adversarial#download-our-pretrained-models",
        "holds": "models.tar.gz of pretrained_models/{cifar10,imagenet,imagenet32}/...",
    },
    "salman2020": {
        "drive": "1MCXSKlz8qYQOGqMhbqmwN4Y0YPNMxVj6",
        "page": "https://github.com/microsoft/denoised-smoothing#getting-started",
        "holds": "pretrained_models.tar.gz of trained_denoisers/ and cifar10_classifiers/ (and ImageNet ones)",
    },
    "macer2020": {
        "page": "https://1drv.ms/u/s!AoKLjEkI6Z_q4V1Zz9I0g40p6KLg?e=2e2wRl",
        "holds": "a OneDrive share (no direct download link); the files' names are not listed in the README",
    },
    "jeong2023": {
        "page": "https://drive.google.com/drive/folders/1TcjIkgSzWPOigD9aJk37UK6BAR0nzgKK",
        "holds": "a Google Drive folder whose data/ holds the CAT-RS checkpoints; no per-file ids are published",
    },
    "jeong2021": {
        "page": "https://drive.google.com/drive/folders/1M6Garbgg201tjxPosGIATZ7kLeB8HJQO",
        "holds": "a Google Drive folder of SmoothMix ImageNet models; no per-file ids are published",
    },
    "carlini2023-cifar10": {
        "url": "https://openaipublic.blob.core.windows.net/diffusion/march-2021/cifar10_uncond_50M_500K.pt",
        "page": "https://github.com/openai/improved-diffusion",
        "holds": "the improved-diffusion CIFAR-10 model (L_hybrid, cosine schedule, 4000 steps)",
    },
    "carlini2023-imagenet": {
        "url": "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/256x256_diffusion_uncond.pt",
        "page": "https://github.com/openai/guided-diffusion",
        "holds": "the guided-diffusion 256x256 unconditional ImageNet model",
    },
}
"""The authors' archives, by key: ``drive`` (a Google Drive file id) or ``url`` where a direct download exists,
``sha256`` and ``size`` (bytes) where the authors publish them (none of these do; the first download's hash is
recorded instead), the ``page`` that announces the files, and what the archive ``holds``. An archive with only a
``page`` cannot be downloaded by a program: its entries load from ``--zoo-dir``."""
