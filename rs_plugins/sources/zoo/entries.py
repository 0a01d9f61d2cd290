"""The zoo's table: the released models of the techniques rs-plugins implements, as data.

Published rows come from the authors' own per-image certification logs (recomputed; [log] in
``docs/zoo.md``) or their README tables ([README]). Archive paths marked "(reconstructed)" follow the
README's description of the archive and could not be checked against the archive itself; ``--zoo-dir`` also
accepts any tail of them.
"""

from __future__ import annotations

from .entry import IMAGENET_LABELS, Protocol, Published, ZooEntry

CIFAR10 = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
COHEN = "Cohen et al., ICML 2019"
SALMAN = "Salman et al., NeurIPS 2019 (SmoothAdv)"
DENOISED = "Salman et al., NeurIPS 2020 (Denoised Smoothing)"
CIFAR_500 = Protocol(every=20)  # Cohen's and SmoothAdv's CIFAR-10 protocol: every 20th test image
IMAGENET_500 = Protocol(every=100)
FULL = Protocol()
RADII = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 2.75, 3.0, 3.25, 3.5)


def row(source: str, images: int, acr: float | None, *accuracy: float, step: float = 0.25) -> Published:
    """A published row: accuracies (percent) at radii 0, step, 2 step, ..."""
    return Published(source, images, {round(i * step, 4): a for i, a in enumerate(accuracy)}, acr)


def cohen_cifar(sigma: str, acr: float, *accuracy: float) -> ZooEntry:
    log = f"locuslab/smoothing data/certify/cifar10/resnet110/noise_{sigma}/test/sigma_{sigma} [log]"
    return ZooEntry(
        f"cohen-cifar10-resnet110-{float(sigma)}", COHEN, "cifar10", "cifar_resnet110", float(sigma), "cohen",
        ("standardize", *CIFAR10), "cohen2019", f"models/cifar10/resnet110/noise_{sigma}/checkpoint.pth.tar",
        protocol=CIFAR_500, published=row(log, 500, acr, *accuracy),
        notes="Sequential(NormalizeLayer, ResNet-110); the NormalizeLayer keeps no tensors, so the weights are '1.*'",
    )  # fmt: skip


def cohen_imagenet(sigma: str, images: int, acr: float, *accuracy: float) -> ZooEntry:
    log = f"locuslab/smoothing data/certify/imagenet/resnet50/noise_{sigma}/test/sigma_{sigma} [log]"
    short = " (the log stops at index 42600: 427 of the 500 images)" if images < 500 else ""
    return ZooEntry(
        f"cohen-imagenet-resnet50-{float(sigma)}", COHEN, "imagenet", "resnet50", float(sigma), "cohen",
        ("standardize", *IMAGENET), "cohen2019", f"models/imagenet/resnet50/noise_{sigma}/checkpoint.pth.tar",
        labels=IMAGENET_LABELS, protocol=IMAGENET_500, published=row(log, images, acr, *accuracy, step=0.5),
        notes="Sequential(NormalizeLayer, DataParallel(ResNet-50)): weights '1.module.*'" + short,
    )  # fmt: skip


def smoothadv_cifar(sigma: str, model: str, acr: float, *accuracy: float) -> ZooEntry:
    log = f"Hadisalman/smoothing-adversarial data/certify/best_models/cifar10/ours/cifar10/{model}/cifar10/resnet110"
    return ZooEntry(
        f"smoothadv-cifar10-resnet110-{float(sigma)}", SALMAN, "cifar10", "cifar_resnet110", float(sigma),
        "cohen", ("center", CIFAR10[0]), "salman2019",
        f"pretrained_models/cifar10/{model}/cifar10/resnet110/noise_{sigma}/checkpoint.pth.tar",
        protocol=FULL, published=row(f"{log}/noise_{sigma}/test/sigma_{sigma} [log]", 10_000, acr, *accuracy),
        notes=f"{model.replace('/', ' ')}; InputCenterLayer (mean only), as the authors' README maps cifar10/ "
        "models outside finetune_*/self_training/; archive path (reconstructed)",
    )  # fmt: skip


def smoothadv_imagenet(sigma: str, model: str, acr: float, *accuracy: float) -> ZooEntry:
    log = f"Hadisalman/smoothing-adversarial data/certify/best_models/imagenet/{model}/resnet50"
    return ZooEntry(
        f"smoothadv-imagenet-resnet50-{float(sigma)}", SALMAN, "imagenet", "resnet50", float(sigma), "cohen",
        ("center", IMAGENET[0]), "salman2019",
        f"pretrained_models/imagenet/{model}/resnet50/noise_{sigma}/checkpoint.pth.tar",
        labels=IMAGENET_LABELS, protocol=IMAGENET_500,
        published=row(f"{log}/noise_{sigma}/test/sigma_{sigma} [log]", 500, acr, *accuracy, step=0.5),
        notes=f"{model.replace('/', ' ')}; InputCenterLayer and DataParallel ('1.module.*'); archive path "
        "(reconstructed)",
    )  # fmt: skip


def jeong_cifar(technique: str, sigma: float, acr: float, *accuracy: float, archive=None, member=None, note=""):
    """A CIFAR-10 ResNet-110 of the Jeong et al. code base (Sequential(NormalizeLayer, ResNet-110)), full test set."""
    papers = {"consistency": "Jeong & Shin, NeurIPS 2020 (Consistency)", "smoothmix": "Jeong et al., NeurIPS 2021 "
              "(SmoothMix)", "catrs": "Jeong, Kim & Shin, AAAI 2023 (CAT-RS)"}  # fmt: skip
    source = "alinlab/smoothing-catrs data/cifar10 (the CAT-RS paper's table) [log]"
    return ZooEntry(
        f"{technique}-cifar10-resnet110-{sigma}", papers[technique], "cifar10", "cifar_resnet110", sigma, "cohen",
        ("standardize", *CIFAR10), archive, member, protocol=FULL, published=row(source, 10_000, acr, *accuracy),
        notes=note,
    )  # fmt: skip


def catrs(sigma: float, lbd: str, acr: float, *accuracy: float) -> ZooEntry:
    member = f"logs/cifar10/catrs/adv_256.0_4/lbd_{lbd}/num_4/noise_{sigma}/cifar_resnet110/0/checkpoint.pth.tar"
    note = (f"lambda {lbd}; the Drive folder's data/ holds the checkpoints under a layout the README does not list: "
            "the path is EXPERIMENTS.MD's (reconstructed); point --zoo-dir at the downloaded folder")  # fmt: skip
    return jeong_cifar("catrs", sigma, acr, *accuracy, archive="jeong2023", member=member, note=note)


def macer(sigma: float, acr: float, *accuracy: float) -> ZooEntry:
    return ZooEntry(
        f"macer-cifar10-resnet110-{sigma}", "Zhai et al., ICLR 2020 (MACER)", "cifar10", "cifar_resnet110", sigma,
        "macer", None, "macer2020", None, protocol=Protocol(start=500, limit=500),
        published=row("RuntianZ/macer README (images 500 to 999) [README]", 500, acr, *accuracy),
        notes="{'net': ResNet-110 state dict, 'epoch'}, no normalisation layer; the share does not list file names: "
        "give the file with --checkpoint FILE",
    )  # fmt: skip


def salman_dncnn(sigma: str) -> ZooEntry:
    return ZooEntry(
        f"salman2020-dncnn-cifar10-mse-{float(sigma)}", DENOISED, "cifar10", "dncnn", float(sigma), "dncnn", None,
        "salman2020",
        f"pretrained_models/trained_denoisers/cifar10/mse_obj/dncnn/epochs_90/noise_{sigma}/checkpoint.pth.tar",
        kind="denoiser", classifier="salman2020-cifar10-resnet110-clean", protocol=Protocol(n=10_000, every=20),
        notes="DnCNN (17 layers, 64 channels) trained with the MSE objective; {'arch': 'cifar_dncnn', 'state_dict'}; "
        "the authors' per-model logs are in their data.tar.gz on Dropbox, not in the repository",
    )  # fmt: skip


ENTRIES: tuple[ZooEntry, ...] = (
    cohen_cifar("0.12", 0.270, 81.4, 58.6),
    cohen_cifar("0.25", 0.429, 74.8, 60.0, 42.8, 26.6),
    cohen_cifar("0.50", 0.538, 65.2, 54.6, 41.4, 32.0, 23.4, 15.2, 9.4, 5.2),
    cohen_cifar("1.00", 0.542, 47.2, 39.2, 34.0, 27.8, 21.6, 17.4, 14.0, 11.8, 10.0, 7.6, 4.8, 3.8, 2.0, 0.4, 0.2),
    cohen_imagenet("0.25", 427, 0.477, 66.7, 49.4),
    cohen_imagenet("0.50", 500, 0.733, 57.2, 45.8, 37.2, 28.6),
    cohen_imagenet("1.00", 500, 0.875, 43.6, 37.8, 32.6, 26.0, 19.4, 14.8, 12.2, 9.0),
    smoothadv_cifar("0.12", "PGD_10steps_multiNoiseSamples/4-multitrain/eps_64", 0.333, 85.4, 73.0),
    smoothadv_cifar("0.25", "PGD_10steps_multiNoiseSamples/8-multitrain/eps_255", 0.551, 74.8, 66.7, 57.6, 47.8),
    smoothadv_cifar("0.50", "PGD_10steps_multiNoiseSamples/2-multitrain/eps_512", 0.717,
                    53.1, 49.2, 44.9, 41.0, 37.2, 33.2, 29.1, 24.0),
    smoothadv_cifar("1.00", "PGD_10steps_multiNoiseSamples/2-multitrain/eps_512", 0.790,
                    43.7, 40.3, 36.9, 33.8, 30.5, 27.0, 24.0, 21.4, 18.4, 15.9, 13.4, 11.2, 8.9, 7.0, 4.6),
    ZooEntry(
        "smoothadv-cifar10-resnet110-pretrained-0.12", SALMAN, "cifar10", "cifar_resnet110", 0.12, "cohen",
        ("standardize", *CIFAR10), "salman2019",
        "pretrained_models/cifar10/finetune_cifar_from_imagenetPGD2steps/PGD_10steps_30epochs_multinoise/"
        "2-multitrain/eps_64/cifar10/resnet110/noise_0.12/checkpoint.pth.tar",
        protocol=CIFAR_500,
        published=row("Hadisalman/smoothing-adversarial data/certify/cifar10/finetune_cifar_from_imagenetPGD2steps/"
                      "PGD_10steps_30epochs_multinoise/2-multitrain/eps_64/cifar10/resnet110/noise_0.12/test/"
                      "sigma_0.12 [log]", 500, 0.355, 88.0, 77.8),
        notes="the README's example: ImageNet32 pre-training, then SmoothAdv fine-tuning; NormalizeLayer (the README's "
        "mapping for finetune_* models)",
    ),  # fmt: skip
    smoothadv_imagenet("0.25", "DDN_2steps/eps_512", 0.538, 64.8, 56.2),
    smoothadv_imagenet("0.50", "PGD_1step/eps_255", 0.849, 54.6, 50.6, 44.6, 38.2),
    smoothadv_imagenet("1.00", "PGD_1step/eps_512", 1.079, 41.6, 38.4, 34.8, 31.0, 28.2, 25.6, 20.4, 16.4),
    macer(0.25, 0.556, 81, 71, 59, 43),
    macer(0.5, 0.726, 66, 60, 53, 46, 38, 29, 19, 12),
    macer(1.0, 0.792, 45, 41, 38, 35, 32, 29, 25, 22, 18, 16),
    jeong_cifar("consistency", 0.25, 0.552, 75.8, 67.6, 58.1, 46.7, note="lambda 20; only the logs are released"),
    jeong_cifar("consistency", 0.5, 0.720, 64.3, 57.5, 50.6, 43.2, 36.2, 29.5, 22.8, 16.1,
                note="lambda 10; only the logs are released"),
    jeong_cifar("consistency", 1.0, 0.756, 46.3, 42.2, 38.1, 34.3, 30.0, 26.3, 22.9, 19.7, 16.6, 13.8, 11.3,
                note="lambda 10; only the logs are released"),
    jeong_cifar("smoothmix", 0.25, 0.553, 77.1, 67.9, 57.9, 46.7,
                note="only the CIFAR-10 logs are released; the ImageNet models sit in a Drive folder (jeong2021)"),
    jeong_cifar("smoothmix", 0.5, 0.736, 63.5, 57.2, 50.5, 43.4, 36.7, 30.6, 24.7, 19.1,
                note="with the one-step adversary; only the CIFAR-10 logs are released"),
    catrs(0.25, "0.5", 0.562, 76.3, 68.1, 58.8, 48.2),
    catrs(0.5, "1.0", 0.757, 62.3, 56.8, 50.5, 44.6, 38.5, 32.7, 27.1, 20.6),
    catrs(1.0, "2.0", 0.815, 43.2, 40.2, 37.2, 34.3, 31.0, 28.1, 24.9, 22.0, 19.3, 16.8, 14.2),
    ZooEntry(
        "salman2020-cifar10-resnet110-clean", DENOISED, "cifar10", "cifar_resnet110", None, "cohen",
        ("standardize", *CIFAR10), "salman2020",
        "pretrained_models/cifar10_classifiers/ResNet110_90epochs/noise_0.00/checkpoint.pth.tar",
        protocol=Protocol(n=10_000, every=20),
        notes="trained without noise (the 'pretrained classifier' the denoisers protect); certify it with "
        "--denoiser dncnn:zoo:salman2020-dncnn-cifar10-mse-SIGMA",
    ),  # fmt: skip
    *(salman_dncnn(s) for s in ("0.12", "0.25", "0.50", "1.00")),
    ZooEntry(
        "carlini2023-diffusion-cifar10", "Carlini et al., ICLR 2023", "cifar10", "diffusion", None,
        "improved-diffusion", None, "carlini2023-cifar10", "", kind="denoiser",
        classifier="hf:aaraki/vit-base-patch16-224-in21k-finetuned-cifar10", denoiser_options=("classifier_size=224",),
        protocol=Protocol(n=100_000, batch_size=200),
        notes="any sigma (give --sigma; the timestep is chosen for it); the classifier, a ViT-B/16 fine-tuned on "
        "CIFAR-10 at 224 x 224 from the Hugging Face hub, stands in for the paper's own",
    ),  # fmt: skip
    ZooEntry(
        "carlini2023-diffusion-imagenet", "Carlini et al., ICLR 2023", "imagenet", "diffusion", None,
        "guided-diffusion", None, "carlini2023-imagenet", "", kind="denoiser", labels=IMAGENET_LABELS,
        classifier="timm:beit_large_patch16_512", protocol=Protocol(n=10_000, every=50, batch_size=200),
        notes="256 x 256 unconditional, any sigma (give --sigma); the paper's classifier, BEiT-L/16 at 512 (timm)",
    ),  # fmt: skip
)
"""Every entry, in the order ``rs-plugins zoo`` lists them."""
