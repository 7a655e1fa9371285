"""Every checkpoint openai/guided-diffusion's README publishes, as the toolkit's model and diffusion configs.

The flags are the README's MODEL_FLAGS (and CLASSIFIER_FLAGS: only `--classifier_depth 4` for 64x64; the rest are
`classifier_defaults()`), derived as ADM's script_util does: channel_mult from the image size, attention at 32,16,8
pixels, heads from num_head_channels (else num_heads), learned σ, 1000 steps, the README's noise schedule. ADM's
legacy QKV attention order (qkv rows grouped per head) is used by every release but 64x64_diffusion
(`--use_new_attention_order True`) in its U-Net attention blocks, and by every classifier's attention blocks (not by
its attention pool). `adm_parameters`: the parameter count of guided-diffusion's own network built with these flags;
the imported U-Net of a class-conditional release has one more label-embedding row (the null class, never
trained by ADM, so refused at sampling).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from guidance.errors import GuidanceError

MULT = {64: [1, 2, 3, 4], 128: [1, 1, 2, 3, 4], 256: [1, 1, 2, 2, 4, 4], 512: [0.5, 1, 1, 2, 2, 4, 4]}


@dataclass(frozen=True)
class Release:
    name: str
    role: str                  # "unet" | "classifier"
    model: dict                # guidance.nn.UNet / EncoderClassifier kwargs (with _target_)
    legacy_attention: bool     # qkv rows grouped per head (QKVAttentionLegacy)
    adm_parameters: int
    data: dict = field(default_factory=dict)
    diffusion: dict = field(default_factory=dict)
    low_res: int | None = None  # super-resolution models: the low-resolution input's size

    @property
    def class_conditional(self) -> bool:
        return self.model.get("num_classes") is not None


def _diffusion(schedule: str) -> dict:
    return {"_target_": "guidance.diffusion.create_diffusion", "steps": 1000, "noise_schedule": schedule,
            "model_var_type": "learned_range", "loss_type": "hybrid", "timestep_respacing": ""}


def _data(name: str, size: int, classes: int | None) -> dict:
    return {"name": name, "image_size": size, "channels": 3, "num_classes": classes}


def _unet(size, channels, blocks, heads=4, head_channels=-1, dropout=0.0, classes=1000, attention=(32, 16, 8),
          in_channels=3, mult=None) -> dict:
    return {"_target_": "guidance.nn.UNet", "image_size": size, "in_channels": in_channels, "out_channels": 3,
            "num_classes": classes, "model_channels": channels, "channel_mult": mult or MULT[size],
            "num_res_blocks": blocks, "attention_resolutions": list(attention), "num_heads": heads,
            "num_head_channels": head_channels, "dropout": dropout, "use_scale_shift_norm": True,
            "resblock_updown": True, "learn_sigma": True}


def _classifier(size, depth=2) -> dict:
    return {"_target_": "guidance.nn.EncoderClassifier", "image_size": size, "in_channels": 3, "num_classes": 1000,
            "model_channels": 128, "channel_mult": MULT[size], "num_res_blocks": depth,
            "attention_resolutions": [32, 16, 8], "num_heads": 1, "num_head_channels": 64, "dropout": 0.0,
            "use_scale_shift_norm": True, "resblock_updown": True, "pool": "attention"}


def _lsun(name: str, dropout: float, data: str) -> Release:
    return Release(name, "unet", _unet(256, 256, 2, head_channels=64, dropout=dropout, classes=None), True,
                   552_814_086, _data(data, 256, None), _diffusion("linear"))


RELEASES: dict[str, Release] = {r.name: r for r in [
    Release("64x64_diffusion", "unet", _unet(64, 192, 3, head_channels=64, dropout=0.1), False, 295_904_454,
            _data("imagenet64", 64, 1000), _diffusion("cosine")),
    Release("128x128_diffusion", "unet", _unet(128, 256, 2, heads=4), True, 421_529_606,
            _data("imagenet128", 128, 1000), _diffusion("linear")),
    Release("256x256_diffusion", "unet", _unet(256, 256, 2, head_channels=64), True, 553_838_086,
            _data("imagenet256", 256, 1000), _diffusion("linear")),
    Release("256x256_diffusion_uncond", "unet", _unet(256, 256, 2, head_channels=64, classes=None), True,
            552_814_086, _data("imagenet256", 256, None), _diffusion("linear")),
    Release("512x512_diffusion", "unet", _unet(512, 256, 2, head_channels=64), True, 558_997_638,
            _data("imagenet512", 512, 1000), _diffusion("linear")),
    _lsun("lsun_bedroom", 0.1, "lsun_bedroom"),
    _lsun("lsun_cat", 0.1, "lsun_cat"),
    _lsun("lsun_horse", 0.1, "lsun_horse"),
    _lsun("lsun_horse_nodropout", 0.0, "lsun_horse"),
    Release("64_256_upsampler", "unet", _unet(256, 192, 2, heads=4, in_channels=6, mult=MULT[256]), True,
            311_795_910, _data("imagenet256", 256, 1000), _diffusion("linear"), low_res=64),
    Release("128_512_upsampler", "unet", _unet(512, 192, 2, head_channels=64, attention=(32, 16), in_channels=6,
                                               mult=MULT[256]), True,
            308_835_270, _data("imagenet512", 512, 1000), _diffusion("linear"), low_res=128),
    Release("64x64_classifier", "classifier", _classifier(64, depth=4), True, 65_438_568,
            _data("imagenet64", 64, 1000), _diffusion("cosine")),
    Release("128x128_classifier", "classifier", _classifier(128), True, 42_568_040,
            _data("imagenet128", 128, 1000), _diffusion("linear")),
    Release("256x256_classifier", "classifier", _classifier(256), True, 54_096_360,
            _data("imagenet256", 256, 1000), _diffusion("linear")),
    Release("512x512_classifier", "classifier", _classifier(512), True, 54_448_360,
            _data("imagenet512", 512, 1000), _diffusion("linear")),
]}


def release(name: str) -> Release:
    key = str(name).removesuffix(".pt")
    if key not in RELEASES:
        raise GuidanceError(f"release={name} is not a guided-diffusion release; use one of {', '.join(RELEASES)}")
    return RELEASES[key]
