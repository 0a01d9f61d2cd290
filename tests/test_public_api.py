"""The public API is pinned: ``import rs_plugins as rs`` and every function and class docs/api.md documents.

A move that drops or renames one of these fails here; a deliberate change edits the lists (and the CHANGELOG).
The lists were taken from the modules docs/api.md documented before the issue-20 layout, at their new homes.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

import rs_plugins as rs

ROOT = Path(__file__).resolve().parents[1]

TOP_LEVEL = [
    "ABSTAIN", "AttackResult", "Certificate", "Certifier", "CertifierSpec", "ComponentConflictError", "Counts",
    "DataRequest", "DenoisedClassifier", "Denoiser", "DenoiserSpec", "Host", "IncompatibleComponentsError",
    "LossOutput", "LossSpec", "MissingDependencyError", "MixerSpec", "ModelRequest", "NeedsFreshSamplesError",
    "NoiseSampler", "NoiseSpec", "PluginBuildError", "RsPluginError", "SmoothedClassifier", "SourceError",
    "TrainingLoss", "UnknownComponentError", "__version__", "attack", "cohen_certify", "cohen_predict", "hookimpl",
    "recertify",
]  # fmt: skip

DOCUMENTED = {
    "rs_plugins.attacks.adversaries": ["Adversary", "attack_classes", "check_eps", "make_adversary"],
    "rs_plugins.attacks.engine": ["AttackResult", "Smoothing", "attack", "attack_dataset", "attack_group_size",
                                  "attack_keys"],
    "rs_plugins.attacks.summary": ["allowed_breaks", "certified_breaks", "certified_targets", "check_certified",
                                   "format_attack_table", "plot_robust_accuracy", "read_certified", "report_attack",
                                   "summarize_attack"],
    "rs_plugins.certify.from_counts": ["choose_classes", "cohen_from_counts", "predict_from_counts", "records"],
    "rs_plugins.certify.recertify": ["certify_rows", "check_can_recertify", "recertify"],
    "rs_plugins.certify.soundness": ["IntervalClassifier", "SoundnessCase", "SoundnessReport",
                                     "check_certifier_soundness", "exact_radius", "standard_cases"],
    "rs_plugins.certify.runner": ["certify_dataset", "check_dataset", "confidence_dataset", "image_generator",
                                  "predict_dataset", "resolve_device"],
    "rs_plugins.certify.confidence": ["read_confidence_targets"],
    "rs_plugins.certify.sampling": ["call_model", "chunked", "count_pass", "eval_mode", "noise_input",
                                    "reporting_passes", "sample_counts", "sample_requests"],
    "rs_plugins.certify.sharding": ["merge_results", "partial_path", "run_sharded"],
    "rs_plugins.certify.smoothing": ["SmoothedClassifier", "check_class_selection", "check_compatible", "check_images",
                                     "check_sampling", "check_smoothing", "cohen_certify", "cohen_predict",
                                     "select_classes", "selection_counts"],
    "rs_plugins.errors": ["ComponentConflictError", "IncompatibleComponentsError", "MissingDependencyError",
                          "NeedsFreshSamplesError", "OutputInUseError", "PluginBuildError", "ResultsFileError",
                          "RsPluginError", "SourceError",
                          "TrainingDivergedError", "UnknownComponentError"],
    "rs_plugins.hookspecs": ["rs_certifiers", "rs_denoisers", "rs_load_data", "rs_load_model", "rs_mixers",
                             "rs_noise_samplers", "rs_training_losses"],
    "rs_plugins.host": ["Component", "Host", "build_options"],
    "rs_plugins.nets": ["CifarResNet", "LeNet", "Normalize", "SmallCNN", "cifar_resnet110", "lenet", "resnet50"],
    "rs_plugins.results.compare": ["Run", "caption", "comparison_notes", "comparison_rows", "default_label",
                                   "format_comparison", "largest_radii", "load_runs", "path_labels", "plot_comparison",
                                   "radius_norm", "shared_setup", "shortfall", "table_format",
                                   "write_comparison_summary"],
    "rs_plugins.results.differences": ["check_comparable", "setting_differences"],
    "rs_plugins.results.figures": ["describe_classifier", "place_legend", "save"],
    "rs_plugins.results.predictions": ["format_predictions", "prediction_table", "results_kind",
                                       "summarize_predictions"],
    "rs_plugins.results.counts": ["CountsLog", "CountsRow", "counts_path", "merge_counts", "read_counts",
                                  "results_path"],
    "rs_plugins.results.metrics": ["ACR_CAVEAT", "p_lower_bounds", "provenance_cells", "quantiles", "run_counts"],
    "rs_plugins.results.files": ["AttackRow", "ConfidenceRow", "ResultsFile", "Row", "check_rows", "planned_images",
                                 "read_attack_results", "read_confidence", "read_results", "read_sidecar", "recorded",
                                 "sidecar_path", "unique_rows"],
    "rs_plugins.results.writer_lock": ["WriterLock", "lock_path", "one_writer"],
    "rs_plugins.schemas": ["ConfidenceSidecar", "DiffusersSchedulerConfig", "DiffusersUNetConfig", "DnCNNFile",
                           "Provenance", "ResultsSidecar", "Rule", "check_record"],
    "rs_plugins.results.report": ["average_certified_radius", "certified_accuracy", "default_radii", "format_accuracy",
                                  "format_provenance", "format_table", "largest_radius", "mean_samples",
                                  "plot_certified_accuracy", "radius_formula", "summarize", "write_summary"],
    "rs_plugins.sources.data": ["data_identity", "labels_of", "load_cifar10", "load_cifar100", "load_data",
                                "load_digits", "load_imagenet", "load_mnist", "load_tensor_file", "select_indices"],
    "rs_plugins.testing": ["CoordinateClassifier", "IdentityDenoiser", "LinearClassifier", "check_certifier",
                           "check_certifier_soundness", "check_denoiser", "check_loss", "check_mixer", "check_noise",
                           "tiny_classifier"],
    "rs_plugins.train.config": ["TrainConfig", "crop_flip"],
    "rs_plugins.train.estimate": ["EpochClock"],
    "rs_plugins.train.held_out": ["held_out_accuracy", "hold_out", "spread_indices"],
    "rs_plugins.train.loop": ["base_indices", "example_targets", "train"],
    "rs_plugins.train.losses": ["EpochAware", "check_bool", "check_choice", "check_float", "check_int", "draw_deltas",
                                "noisy_logits", "soft_smoothed", "warmup_factor"],
    "rs_plugins.types": ["Certificate", "Certifier", "CertifierSpec", "ComponentSpec", "Counts", "DataRequest",
                         "Denoiser",
                         "DenoiserSpec", "LossOutput", "LossSpec", "MixerSpec", "ModelRequest", "NoiseSampler",
                         "NoiseSpec", "TrainingLoss"],
}  # fmt: skip

PLUGIN_AUTHORS = ["rs_plugins.types", "rs_plugins.errors", "rs_plugins.testing", "rs_plugins.hookspecs"]
"""The modules third-party plugins import: they keep their paths whatever else moves."""


def test_top_level_names_are_pinned():
    assert sorted(rs.__all__) == sorted(TOP_LEVEL)
    missing = [name for name in TOP_LEVEL if not hasattr(rs, name)]
    assert not missing, f"rs_plugins.__all__ lists names it does not define: {missing}"


@pytest.mark.parametrize("module", sorted(DOCUMENTED))
def test_documented_names_import(module):
    loaded = importlib.import_module(module)
    missing = [name for name in DOCUMENTED[module] if not hasattr(loaded, name)]
    assert not missing, f"{module} lost documented names: {missing}"


def test_plugin_author_modules_keep_their_paths():
    assert set(PLUGIN_AUTHORS) <= set(DOCUMENTED)
    for module in PLUGIN_AUTHORS:
        assert importlib.import_module(module).__name__ == module


def test_api_page_documents_every_pinned_module():
    """docs/api.md's ``:::`` blocks name importable modules and cover every module pinned here."""
    page = (ROOT / "docs" / "api.md").read_text()
    documented = re.findall(r"^::: ([\w.]+)", page, flags=re.M)
    for module in documented:
        importlib.import_module(module)
    assert set(DOCUMENTED) <= set(documented), f"not on docs/api.md: {sorted(set(DOCUMENTED) - set(documented))}"


ENTRY_POINTS = ["adaptive", "catrs", "consistency", "cpm", "denoisers", "feng", "gaussian", "laplace", "macer",
                "sequential", "smoothadv", "smoothmix", "sources", "standard", "uniform", "zoo"]  # fmt: skip


def test_entry_point_names_are_pinned():
    """Plugins are blocked and reported by entry-point name (RS_PLUGINS_DISABLE), so the names do not change."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    table = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["rs_plugins"]
    assert sorted(table) == ENTRY_POINTS
    for module in table.values():
        importlib.import_module(module)
