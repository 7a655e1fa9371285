"""guidance-sample: draw guided samples from trained snapshots -> samples.npz + grid.png + sample_info.json.

  guidance-sample guidance=cfg guidance.scale=2
  guidance-sample -m guidance=classifier,cfg guidance.scale=0,0.5,1,2,4        # one job folder per point
  guidance-sample -m experiment=adm_table4                                       # ADM Table 4 sweep

Per-image seeds make sample i identical at every batch size and every scale of a sweep (paired comparisons).
A job whose samples.npz exists with matching sample_info.json is skipped (resume of a finished sweep point).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class, instantiate, to_absolute_path
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from guidance.apps.common import CONF_DIR, init_wandb, log_images, one_line_errors, to_container
from guidance.data import to_uint8
from guidance.device import resolve_device
from guidance.diffusion import create_diffusion
from guidance.errors import GuidanceError
from guidance.guiders.base import check_scale
from guidance.grids import save_label_grid
from guidance.io import atomic_save_npz, atomic_write_json
from guidance.sampling import LABEL_MODES, PerImageRNG
from guidance.training.checkpoint import load_snapshot

# sample_info fields that decide whether an existing samples.npz can be reused (batch size and device do not
# change the samples: per-image seeds).
MATCH_KEYS = ("strategy", "guider", "sampler", "steps", "respacing", "eta", "clip_denoised", "num_samples", "seed",
              "labels", "use_ema", "unet_ckpt", "unet_step", "classifier_ckpt", "classifier_step")


def check_compatible(unet_meta: dict, clf_meta: dict) -> None:
    u, c = unet_meta["model_config"], clf_meta["model_config"]
    for key in ("image_size", "in_channels", "num_classes"):
        if u.get(key) != c.get(key):
            raise GuidanceError(f"U-Net {unet_meta['path']} has {key}={u.get(key)} but classifier {clf_meta['path']} "
                                f"has {key}={c.get(key)}; pass a classifier_ckpt trained on the same data")


def build(node: DictConfig, **kwargs):
    """hydra.utils.instantiate, but a GuidanceError from the constructor stays a one-line GuidanceError."""
    try:
        return instantiate(node, **kwargs)
    except Exception as e:
        cause = e
        while cause is not None and not isinstance(cause, GuidanceError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        raise


def run_sample(cfg: DictConfig, out_dir: str | Path) -> Path:
    """Sample per `cfg` (conf/sample.yaml) into out_dir; returns the path of samples.npz."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if cfg.labels not in LABEL_MODES:
        raise GuidanceError(f"labels={cfg.labels} is unknown; use one of {', '.join(LABEL_MODES)}")
    if not all(isinstance(cfg[k], int) and cfg[k] >= 1 for k in ("num_samples", "batch_size")):
        raise GuidanceError(f"num_samples={cfg.num_samples} and batch_size={cfg.batch_size} must be positive integers")
    guider_cls = get_class(cfg.guidance._target_)
    for key in ("scale", "classifier_scale"):  # fail before loading anything
        if key in cfg.guidance:
            check_scale(cfg.guidance[key], f"guidance.{key}")
    device = resolve_device(cfg.device)

    unet_path = to_absolute_path(cfg.unet_ckpt)
    unet, unet_meta = load_snapshot(unet_path, role="unet", map_location=device, use_ema=bool(cfg.use_ema))
    num_classes = unet_meta["model_config"].get("num_classes")
    if num_classes is None:
        raise GuidanceError(f"{unet_path} is an unconditional U-Net; guidance-sample needs a class-conditional one "
                            "trained with label dropout (model.num_classes set)")
    classifier, clf_meta = None, None
    if guider_cls.needs_classifier:
        if not cfg.classifier_ckpt:
            raise GuidanceError(f"guidance={guider_cls.name} needs a noise-aware classifier; pass classifier_ckpt=PATH")
        classifier, clf_meta = load_snapshot(to_absolute_path(cfg.classifier_ckpt), role="classifier",
                                             map_location=device, use_ema=bool(cfg.use_ema))
        check_compatible(unet_meta, clf_meta)
    guider = build(cfg.guidance, classifier=classifier, null_label=num_classes)

    if not unet_meta.get("diffusion_config"):
        raise GuidanceError(f"{unet_path} records no diffusion_config (noise schedule); re-save it with "
                            "guidance.training.save_snapshot(..., diffusion_config=...)")
    dcfg = {k: v for k, v in unet_meta["diffusion_config"].items() if k != "_target_"}
    dcfg["timestep_respacing"] = cfg.sampler.respacing
    diffusion = create_diffusion(**dcfg)
    sampler_cfg = OmegaConf.masked_copy(cfg.sampler, [k for k in cfg.sampler if k != "respacing"])
    sampler = build(sampler_cfg, diffusion=diffusion)

    mc = unet_meta["model_config"]
    cost = guider.cost()  # per step (cfg_interval: a step inside its interval); per sample counts the real chain
    info = {**guider.info(), "guider": to_container(cfg.guidance), "sampler": sampler.name, "steps": sampler.steps,
            "respacing": str(cfg.sampler.respacing), "eta": getattr(sampler, "eta", None),
            "clip_denoised": sampler.clip_denoised, "num_samples": int(cfg.num_samples), "seed": int(cfg.seed),
            "labels": cfg.labels, "use_ema": bool(cfg.use_ema), "num_classes": num_classes,
            "cost_per_step": cost.as_dict(),
            "cost_per_sample": guider.cost_over(diffusion.timestep_map.tolist()).as_dict(),
            "unet_ckpt": unet_path, "unet_step": unet_meta["step"],
            "dataset": (unet_meta.get("data_config") or {}).get("name"),
            "classifier_ckpt": clf_meta["path"] if clf_meta else None,
            "classifier_step": clf_meta["step"] if clf_meta else None}
    npz, info_path = out_dir / "samples.npz", out_dir / "sample_info.json"
    if npz.exists() and info_path.exists():

        old = json.loads(info_path.read_text())
        if all(old.get(k) == info.get(k) for k in MATCH_KEYS):
            print(f"{npz} already holds these samples; skipping")
            return npz

    shape = (mc["in_channels"], mc["image_size"], mc["image_size"])
    images, labels = [], []
    n, bs = int(cfg.num_samples), int(cfg.batch_size)
    with tqdm(total=n, desc=f"sample {guider!r}", unit="img") as bar:
        for start in range(0, n, bs):
            rng = PerImageRNG(cfg.seed, range(start, min(start + bs, n)), device=device)
            y = rng.labels(num_classes, cfg.labels)
            x = sampler.sample(unet, guider, (len(rng), *shape), y, rng)
            images.append(to_uint8(x).cpu())
            labels.append(y.cpu())
            bar.update(len(rng))
    images, labels = torch.cat(images), torch.cat(labels)

    save_label_grid(images[:, :3], labels, out_dir / "grid.png")  # make_grid turns 1 channel into RGB
    info["wall_time_s"] = round(time.time() - t0, 3)
    info["device"] = str(device)
    atomic_save_npz(npz, arr_0=images.permute(0, 2, 3, 1).numpy(), arr_1=labels.numpy().astype(np.int64))
    atomic_write_json(info, info_path)  # written last: its presence marks a finished job

    run = init_wandb(cfg.logger, job_type="sample", config=to_container(cfg), group=cfg.sweep_name, dir=out_dir)
    scalars = {k: v for k, v in info.items() if isinstance(v, (int, float, str))}
    log_images(run, {"grid": out_dir / "grid.png"}, step=0)
    run.log({f"info/{k}": v for k, v in scalars.items()}, step=0)
    run.summary.update(scalars)
    run.finish()
    print(f"wrote {npz} ({n} samples, {guider!r}, {sampler.name} {sampler.steps} steps, {info['wall_time_s']}s)")
    return npz


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="sample")
@one_line_errors
def main(cfg: DictConfig) -> None:
    npz = run_sample(cfg, HydraConfig.get().runtime.output_dir)
    if cfg.evaluate:
        evaluate_point(cfg, npz)


def evaluate_point(cfg: DictConfig, npz: Path) -> None:
    """Chain guidance-evaluate into a sampling job, so `-m` over scales ends with one metrics.json per point."""
    from guidance.metrics.evaluate import evaluate_folder_if_stale

    reference = to_absolute_path(cfg.reference_npz) if cfg.reference_npz else None
    trained_on = json.loads((npz.parent / "sample_info.json").read_text()).get("dataset")
    if reference is None and trained_on and trained_on != cfg.data.name:
        raise GuidanceError(f"the U-Net was trained on {trained_on} but data={cfg.data.name}: pass data={trained_on} "
                            "(the reference set) or reference_npz=PATH")
    metrics = evaluate_folder_if_stale(npz.parent, cfg.metrics, cfg.data, reference)
    if metrics is None:
        print(f"{npz.parent / 'metrics.json'} is up to date; skipping evaluation")
    else:
        print(f"metrics: FID {metrics['fid']:.3f}  precision {metrics['precision']:.3f}  recall {metrics['recall']:.3f}"
              f"  -> {npz.parent / 'metrics.json'}")


if __name__ == "__main__":
    main()
