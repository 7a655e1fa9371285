"""Feature extractors registered with torch-fidelity: "inception" (Inception-v3 + ADM's sFID layer) and "evaluator".

Both take uint8 NCHW images (torch-fidelity's convention) and return a tuple of features in the order of the
requested `features_list`. Both provide a `spatial` feature for sFID next to torch-fidelity's usual layers, and
record `weights_sha256` so every metrics.json can say exactly which weights produced it.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch_fidelity
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3, FeatureExtractorInceptionV3
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from guidance.errors import GuidanceError
from guidance.io import sha256_file  # noqa: F401 (weights hashes; used as ext.sha256_file)

# ADM's sFID layer: mixed_6/conv (TF graph) = Mixed_6d.branch1x1 here; its first 7 of 192 channels on the
# 17x17 grid, flattened channel-last -> 17 * 17 * 7 = 2023 dims (ADM evaluations/evaluator.py).
SFID_CHANNELS = 7
SFID_DIM = 17 * 17 * SFID_CHANNELS

# Which feature each metric reads (the "feature layer set" of the reference cache key).
METRIC_LAYERS = {
    "inception": {"fid": "2048", "kid": "2048", "prc": "2048", "isc": "logits_unbiased", "sfid": "spatial"},
    "evaluator": {"fid": "pool", "kid": "pool", "prc": "pool", "isc": "logits", "sfid": "spatial"},
}


def _to_rgb_uint8(x: torch.Tensor) -> torch.Tensor:
    if not (torch.is_tensor(x) and x.dtype == torch.uint8 and x.dim() == 4):
        raise GuidanceError(f"feature extractors take uint8 NCHW images, got {getattr(x, 'dtype', type(x))} "
                            f"{tuple(getattr(x, 'shape', ()))}: convert with guidance.data.to_uint8")
    if x.shape[1] == 1:  # grayscale (Fashion-MNIST): Inception expects RGB, replicate like every FID tool does
        x = x.expand(-1, 3, -1, -1)
    return x


# ---------------------------------------------------------------------------------------------- Inception


def inception_weights_file(weights_path: str | None) -> Path:
    """Resolve the Inception weights: an explicit file, else torch-fidelity's download (hub cache).

    Offline without a file -> one line saying how to proceed (no silent fallback to another network).
    """
    if weights_path:
        p = Path(weights_path).expanduser()
        if not p.is_file():
            raise GuidanceError(f"Inception weights file {p} not found: set metrics.inception_weights=<path to "
                                f"{Path(URL_INCEPTION_V3).name}> or use metrics=evaluator")
        return p
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(URL_INCEPTION_V3).name
    if not cached.is_file():
        cached.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(URL_INCEPTION_V3, str(cached), progress=True)
        except Exception as e:  # URLError, socket errors, HTTP errors: all mean "could not download"
            raise GuidanceError(
                f"Inception-v3 weights are not cached and could not be downloaded ({type(e).__name__}): set "
                f"metrics.inception_weights=<path to {cached.name}> or use metrics=evaluator") from None
    return cached


class InceptionExtractor(FeatureExtractorBase):
    """torch-fidelity's Inception-v3 (TF-compatible, own resize to 299) plus ADM's 2023-d sFID feature."""

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        weights = inception_weights_file(feature_extractor_weights_path)
        self.weights_sha256 = sha256_file(weights)
        # The network itself stays torch-fidelity's; it must run at least through Mixed_6e (its "768" exit)
        # whenever the spatial feature is asked for, since torch-fidelity stops at the last requested layer.
        inner = [f for f in features_list if f != "spatial"]
        if "spatial" in features_list and not inner:
            inner = ["768"]
        self.net = FeatureExtractorInceptionV3("inception-v3-compat", inner,
                                               feature_extractor_weights_path=str(weights), **kwargs)
        self._spatial = None
        if "spatial" in features_list:
            self.net.Mixed_6d.branch1x1.register_forward_hook(self._keep_spatial)

    def _keep_spatial(self, module, inputs, output):
        self._spatial = output[:, :SFID_CHANNELS].permute(0, 2, 3, 1).flatten(1).to(torch.float32)

    @staticmethod
    def get_provided_features_list():
        return FeatureExtractorInceptionV3.get_provided_features_list() + ("spatial",)

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return METRIC_LAYERS["inception"][metric]

    @staticmethod
    def can_be_compiled():
        return False  # the forward hook keeps state

    @staticmethod
    def get_dummy_input_for_compile():
        return FeatureExtractorInceptionV3.get_dummy_input_for_compile()

    def forward(self, x):
        out = dict(zip(self.net.features_list, self.net(_to_rgb_uint8(x))))
        if "spatial" in self.features_list:
            out["spatial"], self._spatial = self._spatial, None
        return tuple(out[f] for f in self.features_list)


# ---------------------------------------------------------------------------------------------- evaluator


class EvaluatorExtractor(FeatureExtractorBase):
    """EvaluatorNet features from a `guidance-train-evaluator` snapshot (role "evaluator")."""

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        path = Path(feature_extractor_weights_path or "")
        if not feature_extractor_weights_path or not path.is_file():
            raise GuidanceError(f"evaluator checkpoint {path} not found: run guidance-train-evaluator first "
                                f"(same data=...), or set metrics.evaluator_checkpoint=<path>")
        from guidance.training.checkpoint import load_snapshot  # owned by training; imported late on purpose

        self.net, self.meta = load_snapshot(path, role="evaluator")
        self.net.requires_grad_(False).eval()
        self.weights_sha256 = sha256_file(path)

    @staticmethod
    def get_provided_features_list():
        return "pool", "spatial", "logits"

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return METRIC_LAYERS["evaluator"][metric]

    @staticmethod
    def can_be_compiled():
        return True

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 1, 28, 28, dtype=torch.uint8)

    def forward(self, x):
        if not (torch.is_tensor(x) and x.dtype == torch.uint8 and x.dim() == 4):
            raise GuidanceError("feature extractors take uint8 NCHW images: convert with guidance.data.to_uint8")
        if x.shape[1] != self.net.in_channels or x.shape[-1] != self.net.image_size:
            raise GuidanceError(
                f"images are {x.shape[1]}x{x.shape[2]}x{x.shape[3]} but the evaluator was trained on "
                f"{self.net.in_channels}x{self.net.image_size}x{self.net.image_size}: evaluate with the data "
                f"config the evaluator was trained on")
        feats = self.net.features(x.float() / 127.5 - 1.0)  # uint8 -> [-1, 1], the range it was trained in
        return tuple(feats[f].float() for f in self.features_list)


def register_extractors() -> None:
    """Idempotent: torch-fidelity refuses to register a name twice."""
    for name, cls in (("inception", InceptionExtractor), ("evaluator", EvaluatorExtractor)):
        if name not in FEATURE_EXTRACTORS_REGISTRY:
            torch_fidelity.register_feature_extractor(name, cls)


register_extractors()


def create_extractor(name: str, features: list[str], weights_path: str | None, device: torch.device,
                     ) -> FeatureExtractorBase:
    """Instantiate a registered extractor through torch-fidelity's own factory."""
    from torch_fidelity.utils import create_feature_extractor

    if name not in METRIC_LAYERS:
        raise GuidanceError(f"unknown metrics.extractor={name!r}: use one of {sorted(METRIC_LAYERS)}")
    ext = create_feature_extractor(name, list(features), cuda=device.type == "cuda",
                                   feature_extractor_weights_path=weights_path, verbose=False)
    return ext


def weights_sha256_for(name: str, weights_path: str | None) -> str:
    """The hash that keys the reference cache, without building the network."""
    if name == "inception":
        return sha256_file(inception_weights_file(weights_path))
    if not weights_path or not Path(weights_path).is_file():
        raise GuidanceError(f"evaluator checkpoint {weights_path} not found: run guidance-train-evaluator first "
                            f"(same data=...), or set metrics.evaluator_checkpoint=<path>")
    return sha256_file(weights_path)


def layers_for(name: str) -> dict[str, str]:
    if name not in METRIC_LAYERS:
        raise GuidanceError(f"unknown metrics.extractor={name!r}: use one of {sorted(METRIC_LAYERS)}")
    return METRIC_LAYERS[name]


__all__ = ["InceptionExtractor", "EvaluatorExtractor", "create_extractor", "register_extractors", "sha256_file",
           "weights_sha256_for", "layers_for", "SFID_DIM", "METRIC_LAYERS", "inception_weights_file"]
