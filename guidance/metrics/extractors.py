"""Feature extractors registered with torch-fidelity: "inception" (Inception-v3 + ADM's sFID layer), "evaluator"
(the toolkit's dataset classifier), "dinov2" (DINOv2 ViT-L/14, for FD-DINOv2) and "clip" (CLIP ViT-L/14@336px,
for CMMD).

All take uint8 NCHW images (torch-fidelity's convention) and return a tuple of features in the order of the
requested `features_list`, and record `weights_sha256` so every metrics.json says exactly which weights produced
it. Which layer serves which metric is the registry's business (guidance.metrics.registry.EXTRACTORS).
Weights: a local file (metrics.<extractor>_weights) or the official download into torch.hub's cache; offline
without a file, one line saying what to do (never a silent fallback to another network).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch_fidelity
import torchvision
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.feature_extractor_clip import MODEL_METADATA as CLIP_MODELS
from torch_fidelity.feature_extractor_clip import MODEL_URLS as CLIP_URLS
from torch_fidelity.feature_extractor_clip import FeatureExtractorCLIP
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3, FeatureExtractorInceptionV3
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from guidance.errors import GuidanceError
from guidance.io import sha256_file  # noqa: F401 (weights hashes; used as ext.sha256_file)
from guidance.metrics import dinov2
from guidance.metrics.registry import EXTRACTORS, ROLE_FOR_TORCH_FIDELITY, extractor_spec

# ADM's sFID layer: mixed_6/conv (TF graph) = Mixed_6d.branch1x1 here; its first 7 of 192 channels on the
# 17x17 grid, flattened channel-last -> 17 * 17 * 7 = 2023 dims (ADM evaluations/evaluator.py).
SFID_CHANNELS = 7
SFID_DIM = 17 * 17 * SFID_CHANNELS

CLIP_MODEL = "clip-vit-l-14-336px"  # CMMD's embedding (Jayasumana et al. 2024)


def _default_layer(extractor: str, metric: str) -> str:
    """torch-fidelity's per-metric default layer, from the registry's roles."""
    return EXTRACTORS[extractor].layers[ROLE_FOR_TORCH_FIDELITY.get(metric, "embedding")]


def _to_rgb_uint8(x: torch.Tensor) -> torch.Tensor:
    if not (torch.is_tensor(x) and x.dtype == torch.uint8 and x.dim() == 4):
        raise GuidanceError(f"feature extractors take uint8 NCHW images, got {getattr(x, 'dtype', type(x))} "
                            f"{tuple(getattr(x, 'shape', ()))}: convert with guidance.data.to_uint8")
    if x.shape[1] == 1:  # grayscale (Fashion-MNIST): Inception expects RGB, replicate like every FID tool does
        x = x.expand(-1, 3, -1, -1)
    return x


# ---------------------------------------------------------------------------------------------- Inception


def weights_file(weights_path: str | None, url: str, option: str, what: str, file_name: str | None = None,
                 hash_prefix: str | None = None) -> Path:
    """An explicit file, else the official download cached under torch.hub's checkpoints folder.

    Offline without a file -> one line saying how to proceed (no silent fallback to another network).
    """
    if weights_path:
        p = Path(weights_path).expanduser()
        if not p.is_file():
            raise GuidanceError(f"{what} weights file {p} not found: set metrics.{option}=<path to "
                                f"{file_name or Path(url).name}> or use metrics=evaluator")
        return p
    cached = Path(torch.hub.get_dir()) / "checkpoints" / (file_name or Path(url).name)
    if not cached.is_file():
        cached.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(url, str(cached), hash_prefix=hash_prefix, progress=True)
        except Exception as e:  # URLError, socket errors, HTTP errors, a bad hash: all mean "could not download"
            raise GuidanceError(
                f"{what} weights are not cached and could not be downloaded ({type(e).__name__}): set "
                f"metrics.{option}=<path to {cached.name}> or use metrics=evaluator") from None
    return cached


def inception_weights_file(weights_path: str | None) -> Path:
    return weights_file(weights_path, URL_INCEPTION_V3, "inception_weights", "Inception-v3")


def dinov2_weights_file(weights_path: str | None) -> Path:
    return weights_file(weights_path, dinov2.WEIGHTS_URL, "dinov2_weights", "DINOv2 ViT-L/14")


def clip_weights_file(weights_path: str | None) -> Path:
    meta = CLIP_MODELS[CLIP_MODEL]
    return weights_file(weights_path, CLIP_URLS[CLIP_MODEL], "clip_weights", "CLIP ViT-L/14@336px",
                        file_name=f"{CLIP_MODEL}-{meta['hash']}.pt", hash_prefix=meta["hash"])


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
        return _default_layer("inception", metric)

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
        from guidance.checkpoint import load_snapshot  # owned by training; imported late on purpose

        self.net, self.meta = load_snapshot(path, role="evaluator", option="metrics.evaluator_checkpoint")
        self.net.requires_grad_(False).eval()
        self.weights_sha256 = sha256_file(path)

    @staticmethod
    def get_provided_features_list():
        return "pool", "spatial", "logits"

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return _default_layer("evaluator", metric)

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


# ---------------------------------------------------------------------------------------------- DINOv2, CLIP


def _rgb_float(x: torch.Tensor, size: int, mean, std) -> torch.Tensor:
    """torch-fidelity's preprocessing for its DINOv2/CLIP extractors: TF1-compatible bilinear resize of the
    0..255 image, then the network's mean/std (here on the 0..255 scale)."""
    x = interpolate_bilinear_2d_like_tensorflow1x(_to_rgb_uint8(x).float(), size=(size, size), align_corners=False)
    return torchvision.transforms.functional.normalize(x, [255 * m for m in mean], [255 * s for s in std])


def _dinov2_from_state_dict(state: dict) -> dinov2.DinoV2ViT:
    """Any released DINOv2 size (ViT-S/B/L/g, 64-d heads) from its state dict; ViT-L/14 is the metric's."""
    dim, patch = state["cls_token"].shape[-1], state["patch_embed.proj.weight"].shape[-1]
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    grid = round((state["pos_embed"].shape[1] - 1) ** 0.5)
    net = dinov2.DinoV2ViT(dim, depth, max(1, dim // 64), patch, grid * patch)
    net.load_state_dict(state, strict=True)
    return net


class _EmbeddingExtractor(FeatureExtractorBase):
    """An extractor with one feature, its global embedding (named like the extractor)."""

    NAME = ""

    @classmethod
    def get_provided_features_list(cls):
        return (cls.NAME,)

    @classmethod
    def get_default_feature_layer_for_metric(cls, metric):
        return _default_layer(cls.NAME, metric)

    @staticmethod
    def can_be_compiled():
        return True

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 3, 28, 28, dtype=torch.uint8)


class DinoV2Extractor(_EmbeddingExtractor):
    """DINOv2 class-token embedding (FD-DINOv2, Stein et al. 2023), preprocessed as torch-fidelity's DINOv2."""

    NAME, SIZE, MEAN, STD = "dinov2", 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        weights = dinov2_weights_file(feature_extractor_weights_path)
        try:
            self.net = _dinov2_from_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        except Exception as e:  # a truncated file, another network's weights, ...
            raise GuidanceError(f"{weights} is not a DINOv2 state dict ({type(e).__name__}: {str(e)[:80]}): "
                                f"set metrics.dinov2_weights=<dinov2_vitl14_pretrain.pth>") from None
        self.net.requires_grad_(False).eval()
        self.weights_sha256 = sha256_file(weights)

    def forward(self, x):
        return (self.net(_rgb_float(x, self.SIZE, self.MEAN, self.STD)).float(),)


class ClipExtractor(_EmbeddingExtractor):
    """CLIP image embedding (CMMD, Jayasumana et al. 2024): torch-fidelity's CLIP on a local or cached file."""

    NAME = "clip"

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        weights = clip_weights_file(feature_extractor_weights_path)
        try:
            self.net = FeatureExtractorCLIP(CLIP_MODEL, ["clip"], feature_extractor_weights_path=str(weights),
                                            **kwargs)
        except Exception as e:  # not TorchScript, not a CLIP checkpoint, truncated
            raise GuidanceError(f"{weights} is not an OpenAI CLIP TorchScript file ({type(e).__name__}): set "
                                f"metrics.clip_weights=<{Path(CLIP_URLS[CLIP_MODEL]).name}>") from None
        self.weights_sha256 = sha256_file(weights)

    def forward(self, x):
        return self.net(_to_rgb_uint8(x).contiguous())


EXTRACTOR_CLASSES = {"inception": InceptionExtractor, "evaluator": EvaluatorExtractor, "dinov2": DinoV2Extractor,
                     "clip": ClipExtractor}
WEIGHTS_FILES = {"inception": inception_weights_file, "dinov2": dinov2_weights_file, "clip": clip_weights_file}


def register_extractors() -> None:
    """Idempotent: torch-fidelity refuses to register a name twice."""
    for name, cls in EXTRACTOR_CLASSES.items():
        if name not in FEATURE_EXTRACTORS_REGISTRY:
            torch_fidelity.register_feature_extractor(name, cls)


register_extractors()


def create_extractor(name: str, features: list[str], weights_path: str | None, device: torch.device,
                     ) -> FeatureExtractorBase:
    """Instantiate a registered extractor through torch-fidelity's own factory."""
    from torch_fidelity.utils import create_feature_extractor

    extractor_spec(name)  # a one-line error for unknown names
    return create_feature_extractor(name, list(features), cuda=device.type == "cuda",
                                    feature_extractor_weights_path=weights_path, verbose=False)


def weights_sha256_for(name: str, weights_path: str | None) -> str:
    """The hash that keys the reference cache, without building the network."""
    extractor_spec(name)
    if name in WEIGHTS_FILES:
        return sha256_file(WEIGHTS_FILES[name](weights_path))
    if not weights_path or not Path(weights_path).is_file():
        raise GuidanceError(f"evaluator checkpoint {weights_path} not found: run guidance-train-evaluator first "
                            f"(same data=...), or set metrics.evaluator_checkpoint=<path>")
    return sha256_file(weights_path)


__all__ = ["InceptionExtractor", "EvaluatorExtractor", "DinoV2Extractor", "ClipExtractor", "create_extractor",
           "register_extractors", "sha256_file", "weights_sha256_for", "SFID_DIM", "inception_weights_file",
           "dinov2_weights_file", "clip_weights_file"]
