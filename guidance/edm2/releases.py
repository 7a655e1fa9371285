"""EDM2's released configurations (Karras et al. 2024, Table 2 and App. D), restated from NVlabs/edm2's
train_edm2.py (training presets) and generate_images.py (the post-hoc EMA pickles and their guidance settings).

Every EDM2 network is the same U-Net with edm2's defaults (channel_mult [1, 2, 3, 4], 3 blocks per level,
attention at 16 and 8, 64 channels per head, 64x64 inputs) and a width `model_channels` per size; ImageNet-512
models run on 4-channel SD-VAE latents (`STABILITY_VAE`), ImageNet-64 ones on pixels. `parameters`: the count of
the network built from the config (EDM2Denoiser, with its 1000-class label embedding; tests/test_edm2.py checks it
against the paper's 125M ... 1523M). Unconditional companions (`-uncond`, used as CFG's guiding network) have
label_dim 0.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from guidance.errors import GuidanceError

MODEL_ROOT = "https://nvlabs-fi-cdn.nvidia.com/edm2/posthoc-reconstructions"

# EDM2's StabilityVAEEncoder defaults (training/encoders.py): latents of stabilityai/sd-vae-ft-mse standardized per
# channel to final_std 0.5: z = raw · scale + bias with scale = 0.5 / raw_std, bias = −raw_mean · scale (float32).
_RAW_MEAN, _RAW_STD = [5.81, 3.25, 0.12, -2.15], [4.17, 4.62, 3.71, 3.28]
_SCALE = np.float32(0.5) / np.float32(_RAW_STD)
_BIAS = np.float32(0) - np.float32(_RAW_MEAN) * _SCALE
STABILITY_VAE = {"vae_name": "stabilityai/sd-vae-ft-mse", "raw_mean": _RAW_MEAN, "raw_std": _RAW_STD,
                 "final_mean": 0.0, "final_std": 0.5, "scale": [float(v) for v in _SCALE],
                 "bias": [float(v) for v in _BIAS]}

# size: (model_channels, dropout)  (train_edm2.py's presets; the same for img512 and img64)
SIZES = {"xxs": (64, 0.0), "xs": (128, 0.0), "s": (192, 0.0), "m": (256, 0.1), "l": (320, 0.1), "xl": (384, 0.1),
         "xxl": (448, 0.1)}
# dataset: (img_channels, training presets' sizes, P_mean, P_std)
DATASETS = {"img512": (4, ("xxs", "xs", "s", "m", "l", "xl", "xxl"), -0.4, 1.0),
            "img64": (3, ("xs", "s", "m", "l", "xl"), -0.8, 1.6)}
# parameters of EDM2Denoiser per (dataset, size, conditional), computed from the configs (meta device)
PARAMETERS = {
    ("img512", "xxs", True): 31_309_029, ("img512", "xxs", False): 31_053_029,
    ("img512", "xs", True): 124_713_253, ("img512", "xs", False): 124_201_253,
    ("img512", "s", True): 280_212_837, ("img512", "s", False): 279_444_837,
    ("img512", "m", True): 497_807_781, ("img512", "m", False): 496_783_781,
    ("img512", "l", True): 777_498_085, ("img512", "l", False): 776_218_085,
    ("img512", "xl", True): 1_119_283_749, ("img512", "xl", False): 1_117_747_749,
    ("img512", "xxl", True): 1_523_164_773, ("img512", "xxl", False): 1_521_372_773,
    ("img64", "xs", True): 124_710_949, ("img64", "s", True): 280_209_381, ("img64", "m", True): 497_803_173,
    ("img64", "l", True): 777_492_325, ("img64", "xl", True): 1_119_276_837,
}


@dataclass(frozen=True)
class Architecture:
    """One EDM2 network configuration, e.g. "edm2-img512-xs" or "edm2-img512-xs-uncond"."""

    name: str
    dataset: str
    size: str
    conditional: bool

    @property
    def latent(self) -> bool:
        return self.dataset == "img512"

    @property
    def model(self) -> dict:
        """EDM2Denoiser's config (with _target_), as edm2's training loop builds Precond."""
        channels, dropout = SIZES[self.size]
        return {"_target_": "guidance.nn.edm2.EDM2Denoiser", "img_resolution": 64,
                "img_channels": DATASETS[self.dataset][0], "label_dim": 1000 if self.conditional else 0,
                "use_fp16": True, "model_channels": channels, "channel_mult": [1, 2, 3, 4], "num_blocks": 3,
                "attn_resolutions": [16, 8], "dropout": dropout}

    @property
    def parameters(self) -> int | None:
        return PARAMETERS.get((self.dataset, self.size, self.conditional))

    def info(self) -> dict:
        return {"name": self.name, "dataset": self.dataset, "size": self.size, "conditional": self.conditional,
                "model_channels": SIZES[self.size][0], "dropout": SIZES[self.size][1], "channel_mult": [1, 2, 3, 4],
                "num_blocks": 3, "attn_resolutions": [16, 8], "parameters": self.parameters,
                "image_size": 512 if self.latent else 64}


ARCHITECTURES: dict[str, Architecture] = {}
for _ds, (_, _sizes, _, _) in DATASETS.items():
    for _size in SIZES:
        for _cond in (True, False):
            _name = f"edm2-{_ds}-{_size}" + ("" if _cond else "-uncond")
            ARCHITECTURES[_name] = Architecture(_name, _ds, _size, _cond)

FILE_NAME = re.compile(r"^(edm2-(img512|img64)-(xxs|xs|s|m|l|xl|xxl)(-uncond)?)-(\d{7})-(\d\.\d{3})\.pkl$")


def architecture(name: str) -> Architecture:
    key = str(name).removesuffix(".pkl")
    if key not in ARCHITECTURES:
        raise GuidanceError(f"edm2 architecture {name!r} is unknown; use one of edm2-img512-{{xxs..xxl}}[-uncond], "
                            "edm2-img64-{xs..xxl}")
    return ARCHITECTURES[key]


def parse_file_name(name: str) -> dict | None:
    """edm2's post-hoc pickle name -> {architecture, kimg, ema_std} ("edm2-img512-xs-2147483-0.135.pkl":
    trained 2147483 kimg, post-hoc EMA σ_rel 0.135); None for another name."""
    m = FILE_NAME.match(str(name).rsplit("/", 1)[-1])
    return None if m is None else {"architecture": m.group(1), "kimg": int(m.group(5)), "ema_std": float(m.group(6))}


@dataclass(frozen=True)
class GenerationPreset:
    """A generate_images.py preset: the main network file, the guiding one (None: unguided), the guidance weight
    in edm2's convention (D = D_g + w (D − D_g): 1 = unguided) and the FID or FD_DINOv2 edm2 reports for it."""

    name: str
    net: str
    gnet: str | None = None
    guidance: float = 1.0
    metric: str = "fid"
    value: float = float("nan")

    @property
    def kind(self) -> str:
        """"none", "cfg" (an unconditional guiding network) or "autoguidance" (a smaller, shorter-trained one)."""
        if self.gnet is None:
            return "none"
        return "cfg" if "-uncond" in self.gnet and "-uncond" not in self.net else "autoguidance"


def _p(name, net, gnet=None, guidance=1.0, value=float("nan")):
    return GenerationPreset(name, net + ".pkl", None if gnet is None else gnet + ".pkl", guidance,
                            "fd_dinov2" if name.endswith("dino") else "fid", value)


GENERATION_PRESETS: dict[str, GenerationPreset] = {p.name: p for p in [
    _p("edm2-img512-xs-fid", "edm2-img512-xs-2147483-0.135", value=3.53),
    _p("edm2-img512-xs-dino", "edm2-img512-xs-2147483-0.200", value=103.39),
    _p("edm2-img512-s-fid", "edm2-img512-s-2147483-0.130", value=2.56),
    _p("edm2-img512-s-dino", "edm2-img512-s-2147483-0.190", value=68.64),
    _p("edm2-img512-m-fid", "edm2-img512-m-2147483-0.100", value=2.25),
    _p("edm2-img512-m-dino", "edm2-img512-m-2147483-0.155", value=58.44),
    _p("edm2-img512-l-fid", "edm2-img512-l-1879048-0.085", value=2.06),
    _p("edm2-img512-l-dino", "edm2-img512-l-1879048-0.155", value=52.25),
    _p("edm2-img512-xl-fid", "edm2-img512-xl-1342177-0.085", value=1.96),
    _p("edm2-img512-xl-dino", "edm2-img512-xl-1342177-0.155", value=45.96),
    _p("edm2-img512-xxl-fid", "edm2-img512-xxl-0939524-0.070", value=1.91),
    _p("edm2-img512-xxl-dino", "edm2-img512-xxl-0939524-0.150", value=42.84),
    _p("edm2-img64-s-fid", "edm2-img64-s-1073741-0.075", value=1.58),
    _p("edm2-img64-m-fid", "edm2-img64-m-2147483-0.060", value=1.43),
    _p("edm2-img64-l-fid", "edm2-img64-l-1073741-0.040", value=1.33),
    _p("edm2-img64-xl-fid", "edm2-img64-xl-0671088-0.040", value=1.33),
    _p("edm2-img512-xs-guid-fid", "edm2-img512-xs-2147483-0.045", "edm2-img512-xs-uncond-2147483-0.045", 1.40, 2.91),
    _p("edm2-img512-xs-guid-dino", "edm2-img512-xs-2147483-0.150", "edm2-img512-xs-uncond-2147483-0.150", 1.70, 79.94),
    _p("edm2-img512-s-guid-fid", "edm2-img512-s-2147483-0.025", "edm2-img512-xs-uncond-2147483-0.025", 1.40, 2.23),
    _p("edm2-img512-s-guid-dino", "edm2-img512-s-2147483-0.085", "edm2-img512-xs-uncond-2147483-0.085", 1.90, 52.32),
    _p("edm2-img512-m-guid-fid", "edm2-img512-m-2147483-0.030", "edm2-img512-xs-uncond-2147483-0.030", 1.20, 2.01),
    _p("edm2-img512-m-guid-dino", "edm2-img512-m-2147483-0.015", "edm2-img512-xs-uncond-2147483-0.015", 2.00, 41.98),
    _p("edm2-img512-l-guid-fid", "edm2-img512-l-1879048-0.015", "edm2-img512-xs-uncond-2147483-0.015", 1.20, 1.88),
    _p("edm2-img512-l-guid-dino", "edm2-img512-l-1879048-0.035", "edm2-img512-xs-uncond-2147483-0.035", 1.70, 38.20),
    _p("edm2-img512-xl-guid-fid", "edm2-img512-xl-1342177-0.020", "edm2-img512-xs-uncond-2147483-0.020", 1.20, 1.85),
    _p("edm2-img512-xl-guid-dino", "edm2-img512-xl-1342177-0.030", "edm2-img512-xs-uncond-2147483-0.030", 1.70, 35.67),
    _p("edm2-img512-xxl-guid-fid", "edm2-img512-xxl-0939524-0.015", "edm2-img512-xs-uncond-2147483-0.015", 1.20, 1.81),
    _p("edm2-img512-xxl-guid-dino", "edm2-img512-xxl-0939524-0.015", "edm2-img512-xs-uncond-2147483-0.015", 1.70, 33.09),
    _p("edm2-img512-s-autog-fid", "edm2-img512-s-2147483-0.070", "edm2-img512-xs-0134217-0.125", 2.10, 1.34),
    _p("edm2-img512-s-autog-dino", "edm2-img512-s-2147483-0.120", "edm2-img512-xs-0134217-0.165", 2.45, 36.67),
    _p("edm2-img512-xxl-autog-fid", "edm2-img512-xxl-0939524-0.075", "edm2-img512-m-0268435-0.155", 2.05, 1.25),
    _p("edm2-img512-xxl-autog-dino", "edm2-img512-xxl-0939524-0.130", "edm2-img512-m-0268435-0.205", 2.30, 24.18),
    _p("edm2-img512-s-uncond-autog-fid", "edm2-img512-s-uncond-2147483-0.070", "edm2-img512-xs-uncond-0134217-0.110",
       2.85, 3.86),
    _p("edm2-img512-s-uncond-autog-dino", "edm2-img512-s-uncond-2147483-0.090", "edm2-img512-xs-uncond-0134217-0.125",
       2.90, 90.39),
    _p("edm2-img64-s-autog-fid", "edm2-img64-s-1073741-0.045", "edm2-img64-xs-0134217-0.110", 1.70, 1.01),
    _p("edm2-img64-s-autog-dino", "edm2-img64-s-1073741-0.105", "edm2-img64-xs-0134217-0.175", 2.20, 31.85),
]}


def generation_preset(name: str) -> GenerationPreset:
    if name not in GENERATION_PRESETS:
        raise GuidanceError(f"edm2 preset {name!r} is unknown; use one of {', '.join(GENERATION_PRESETS)}")
    return GENERATION_PRESETS[name]
