"""Fidelity/diversity metrics: FID, sFID, IS, KID, precision/recall, density/coverage via torch-fidelity.

Importing this package registers the "inception" and "evaluator" feature extractors with torch-fidelity.
"""

from guidance.metrics.evaluate import compute_metrics, evaluate_folder, evaluate_samples, load_images_npz
from guidance.metrics.extractors import EvaluatorExtractor, InceptionExtractor, register_extractors
from guidance.metrics.fid import feature_statistics, frechet_distance
from guidance.metrics.prdc import manifold_indicators, prdc

__all__ = [
    "compute_metrics", "evaluate_folder", "evaluate_samples", "load_images_npz",
    "EvaluatorExtractor", "InceptionExtractor", "register_extractors",
    "feature_statistics", "frechet_distance", "manifold_indicators", "prdc",
]
