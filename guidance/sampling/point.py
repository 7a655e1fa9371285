"""One sweep point: load the networks its strategy declares, sample N seeded images into a folder, write
samples.npz + grid.png + sample_info.json (the library behind guidance-sample and guidance-main's sweep).

    from guidance.sampling.point import run_sample
    run_sample(cfg, "runs/point")   # cfg: conf/sample.yaml's fields (a DictConfig, e.g. from guidance.config)

Per-image seeds make sample i identical at every batch size and every scale of a sweep (paired comparisons).
A folder whose samples.npz exists with matching sample_info.json is skipped (resume of a finished point).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from guidance import distributed
from guidance.checkpoint import load_model, load_snapshot
from guidance.config import build
from guidance.engine.model import DenoisingModel
from guidance.errors import GuidanceError, check_scale
from guidance.engine import cost_per_sample
from guidance.io import sha256_file
from guidance.sampling.denoiser import GuidedDenoiser
from guidance.sampling.generate import (batch_ranges, finished_samples, generate_parts, merge_parts, part_path,
                                       point_writer, reuse_line, save_samples)
from guidance.sampling.runtime import Runtime, numerics
from guidance.settings import sample_settings
from guidance.tracking import init_wandb, log_images


def to_container(cfg) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


# sample_info fields that decide whether an existing samples.npz can be reused. The numerics (batch size, thread
# count) are recorded but not matched: per-image seeds make them change the samples only by float rounding.
# x0_clip: CFG++ points sampled while it still clipped are not reused. decoder: a latent model's autoencoder (its
# weights' sha256) and standardization (absent, None, for pixel models).
# model: the adapter (points before it lack the key: compared to the ε/discrete default, generate.same_setting);
# unet_model / weak_model: a `_target_` model's config and content hash (None for snapshots, as in older points).
MATCH_KEYS = ("strategy", "guider", "sampler", "sampler_config", "timesteps", "num_samples", "seed", "labels",
              "use_ema", "unet_sha256", "unet_step", "classifier_sha256", "classifier_step", "weak_ckpt", "engine",
              "runtime", "x0_clip", "decoder", "model", "unet_model", "weak_model")
ENGINE = 2  # samples of another engine version are never reused as new


DATA_IDENTITY = ("name", "path", "image_size", "channels", "num_classes")  # what makes two datasets one


def check_compatible(unet_meta: dict, clf_meta: dict, what: str = "classifier") -> None:
    """Same geometry and classes, and the same DATASET (its snapshots record it): a classifier trained on another
    dataset of the same shape (MNIST for a Fashion-MNIST U-Net) would guide towards the wrong classes."""
    u, c = unet_meta["model_config"], clf_meta["model_config"]
    unet_name = unet_meta["path"] or f"unet_model {unet_meta['target']['_target_']}"
    keys = ("image_size", "in_channels", "num_classes")
    if u.get("num_classes") is None and what == "classifier":  # an unconditional U-Net guided by a classifier
        keys = ("image_size", "in_channels")
    for key in keys:
        if u.get(key) != c.get(key):
            raise GuidanceError(f"U-Net {unet_name} has {key}={u.get(key)} but {what} {clf_meta['path']} "
                                f"has {key}={c.get(key)}; pass a {what} checkpoint trained on the same data")
    ud, cd = unet_meta.get("data_config") or {}, clf_meta.get("data_config") or {}
    differ = [k for k in DATA_IDENTITY if k in ud and k in cd and ud[k] != cd[k] and (k != "num_classes" or k in keys)]
    if differ:
        k = differ[0]
        raise GuidanceError(f"U-Net {unet_meta['path']} was trained on data.{k}={ud[k]} but {what} {clf_meta['path']} "
                            f"on data.{k}={cd[k]}; pass a {what} checkpoint trained on the same dataset")


def check_request(cfg: DictConfig) -> None:
    """Fail on bad settings before loading anything: the options typed (guidance.settings), the scales finite."""
    sample_settings(cfg)
    for key in ("scale", "classifier_scale"):
        if key in cfg.guidance:
            check_scale(cfg.guidance[key], f"guidance.{key}")


def load_networks(cfg: DictConfig, guider, device) -> tuple[dict, dict, dict | None]:
    """The networks the guider declares -> (networks, unet_meta, clf_meta). The U-Net (and autoguidance's weak
    model) are DenoisingModels (guidance.engine.model): a snapshot's built from its metadata
    (guidance.checkpoint.load_model), or a `_target_` config's (unet_model / weak_model: bring your own model).
    unet_meta holds what the point records and needs: path, step, sha256 (the content), shape, num_classes."""
    unet, unet_meta = load_unet(cfg, device)
    networks, clf_meta = {"unet": unet}, None
    if "weak" in guider.networks:
        networks["weak"], unet_meta["weak"], unet_meta["weak_model"] = load_weak(cfg, unet, unet_meta, device)
    if "classifier" in guider.networks:
        if not cfg.classifier_ckpt:
            raise GuidanceError(f"guidance={guider.name} needs a noise-aware classifier; pass classifier_ckpt=PATH")
        networks["classifier"], clf_meta = load_snapshot(to_absolute_path(cfg.classifier_ckpt), role="classifier",
                                                         map_location=device, use_ema=bool(cfg.use_ema))
        check_compatible(unet_meta, clf_meta)
    return networks, unet_meta, clf_meta


def load_unet(cfg: DictConfig, device) -> tuple[DenoisingModel, dict]:
    """The model to sample: unet_model (a `_target_` config) when given, else the snapshot unet_ckpt."""
    if cfg.get("unet_model") is not None:
        if cfg.get("sample_shape") is None:
            raise GuidanceError("unet_model needs the shape of its samples: set sample_shape=[C,H,W] (e.g. "
                                "sample_shape=[1,28,28])")
        model = target_model(cfg.unet_model, "unet_model", device)
        shape = tuple(int(n) for n in cfg.sample_shape)
        classes = cfg.get("num_classes") if cfg.get("num_classes") is not None else model.null_label
        return model, {"path": None, "step": None, "sha256": model_sha256(model), "shape": shape,
                       "num_classes": classes, "target": to_container(cfg.unet_model),
                       # what check_compatible compares with a classifier's snapshot
                       "model_config": {"in_channels": shape[0], "image_size": shape[1], "num_classes": classes}}
    for key in ("sample_shape", "num_classes"):
        if cfg.get(key) is not None:
            raise GuidanceError(f"{key} is for a unet_model; the snapshot unet_ckpt={cfg.unet_ckpt} has its own: "
                                f"drop {key}")
    unet_path = to_absolute_path(cfg.unet_ckpt)
    unet, unet_meta = load_model(unet_path, map_location=device, use_ema=bool(cfg.use_ema))
    if (unet_meta.get("extra") or {}).get("low_res"):
        raise GuidanceError(f"{unet_path} is a super-resolution model (ADM {unet_meta['extra'].get('adm_release')}: "
                            "it needs a low-resolution image per sample), which guidance-sample does not run")
    mc = unet_meta["model_config"]
    unet_meta.update(sha256=sha256_file(unet_path), shape=(mc["in_channels"], mc["image_size"], mc["image_size"]),
                     num_classes=mc["num_classes"], target=None)
    return unet, unet_meta


def target_model(node, option: str, device) -> DenoisingModel:
    """A model built by a `_target_` config: a DenoisingModel on its own levels, on `device`, in eval mode."""
    target = node.get("_target_") if hasattr(node, "get") else None
    if not target:
        raise GuidanceError(f"{option} must be a config with _target_ (a function or class returning a "
                            f"guidance.engine.model.DenoisingModel), e.g. {option}={{_target_: mymodels.build}}")
    try:
        model = build(node, _convert_="all")
    except GuidanceError:
        raise
    except Exception as e:  # an import error, a wrong argument: Hydra's message is many lines
        cause = e.__cause__ or e
        raise GuidanceError(f"{option}: cannot build {target} ({type(cause).__name__}: "
                            f"{(str(cause).splitlines() or [''])[0][:200]})") from None
    if not isinstance(model, DenoisingModel):
        raise GuidanceError(f"{option}: {target} returned a {type(model).__name__}, not a "
                            "guidance.engine.model.DenoisingModel: wrap the network (README, \"Bring your own model\")")
    if model.levels is None:
        raise GuidanceError(f"{option}: {target} returned a DenoisingModel without levels: give it the "
                            "GaussianDiffusion it was trained on or ContinuousLevels(sigma_min, sigma_max)")
    model.network.to(device).eval()
    return model


def model_sha256(model: DenoisingModel) -> str:
    """A `_target_` model's identity by content: its network's class and state_dict (names, dtypes, shapes,
    bytes), its adapter (info) and, on trained timesteps, their ᾱ. The path it was read from plays no part."""
    h = hashlib.sha256()
    net = model.network
    h.update(json.dumps([f"{type(net).__module__}.{type(net).__qualname__}", model.info()], sort_keys=True,
                        default=str).encode())
    for name, tensor in sorted(net.state_dict().items()):
        t = tensor.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}:{t.dtype}:{tuple(tensor.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    if not model.continuous:
        h.update(np.asarray(model.levels.alphas_cumprod, dtype=np.float64).tobytes())
    return h.hexdigest()


def load_weak(cfg: DictConfig, unet: DenoisingModel, unet_meta: dict, device):
    """Autoguidance's weak model -> (model, weak_ckpt record, weak_model record): a snapshot (weak_ckpt: same data,
    classes and noise schedule as the main one) or a `_target_` config (weak_model: on the main model's levels)."""
    if cfg.get("weak_model") is not None:
        weak = target_model(cfg.weak_model, "weak_model", device)
        check_weak_levels(unet, weak, "weak_model")
        return weak, None, {"target": to_container(cfg.weak_model), "sha256": model_sha256(weak)}
    if not cfg.get("weak_ckpt"):
        raise GuidanceError("guidance=autoguidance needs the weak model: pass weak_ckpt=PATH (train one with "
                            "guidance-train experiment=weak_unet) or a weak_model={_target_: ...}")
    path = to_absolute_path(cfg.weak_ckpt)
    weak, meta = load_model(path, map_location=device, use_ema=bool(cfg.use_ema), option="weak_ckpt")
    if unet_meta["target"] is None:
        check_compatible(unet_meta, meta, what="weak U-Net")
        strip = lambda d: {k: v for k, v in (d or {}).items() if k != "timestep_respacing"}
        if strip(meta.get("diffusion_config")) != strip(unet_meta.get("diffusion_config")):
            raise GuidanceError(f"weak U-Net {path} was trained with another noise schedule than the U-Net: "
                                "train it with the same diffusion=...")
    check_weak_levels(unet, weak, "weak_ckpt")
    return weak, {"path": meta["path"], "step": meta["step"], "sha256": sha256_file(path)}, None


def check_weak_levels(unet: DenoisingModel, weak: DenoisingModel, option: str) -> None:
    """The weak model is evaluated at the main model's steps: both continuous, or the same trained timesteps."""
    if unet.continuous != weak.continuous or not (unet.continuous or np.array_equal(
            np.asarray(unet.levels.alphas_cumprod), np.asarray(weak.levels.alphas_cumprod))):
        kind = lambda m: "continuous σ" if m.continuous else f"{m.levels.num_timesteps} trained timesteps"
        raise GuidanceError(f"the {option} model's noise levels ({kind(weak)}) are not the main model's "
                            f"({kind(unet)}): give it a model on the same levels (autoguidance evaluates both at "
                            "every step)")


def run_sample(cfg: DictConfig, out_dir: str | Path) -> Path:
    """Sample per `cfg` (conf/sample.yaml) into out_dir; returns the path of samples.npz.

    Under torchrun each rank samples every world-th batch (per-image seeds: bitwise the samples of one process)
    and rank 0 merges them. Finished batches are kept in out_dir/.parts-<plan> until the point is written, so a
    killed run resumes at its first missing batch."""
    out_dir, t0 = Path(out_dir), time.time()
    check_request(cfg)
    env = distributed.setup(cfg.device)
    with point_writer(out_dir) if env.is_main else contextlib.nullcontext():  # rank 0 holds it for the job
        return _sample_point(cfg, out_dir, env, t0)


def _sample_point(cfg: DictConfig, out_dir: Path, env, t0: float) -> Path:
    guider = build(cfg.guidance)
    networks, unet_meta, clf_meta = load_networks(cfg, guider, env.device)
    model = networks["unet"]
    sampler = build(cfg.sampler, diffusion=model.levels)  # the model's trained timesteps or continuous σ
    runtime = Runtime.resolve(cfg.precision, cfg.channels_last, cfg.compile, env.device)
    if runtime.precision == "fp16" and env.device.type == "cpu" and env.is_main:
        print("note: precision=fp16 on a CPU runs ~17x slower than fp32 (CPUs have no fp16 matmul units): use "
              "precision=fp32, or bf16 on CPUs with AMX/AVX512-bf16")
    # null label and whether it was trained: the model's (a snapshot's from its metadata)
    decoder = latent_decoder(cfg, model, unet_meta, env.device)
    denoiser = GuidedDenoiser(guider, networks, batching=cfg.batching, runtime=runtime, measure_flops=True,
                              decoder=decoder)
    classes = unet_meta["num_classes"] or (clf_meta["model_config"]["num_classes"] if clf_meta else 1)
    info = {**point_info(cfg, guider, sampler, model, unet_meta, clf_meta), "runtime": runtime.info(),
            "batching": denoiser.batching_for(env.device), "num_classes": classes,
            "numerics": numerics(env.device, int(cfg.batch_size))}
    if decoder is not None:
        info.update(decoder=decoder.info(), vae=decoder.source)
    old = finished_samples(out_dir, info, MATCH_KEYS)
    if old is not None:
        print(reuse_line(out_dir, old, info))
        return out_dir / "samples.npz"
    # The plan: the settings and the batch size and thread count, so a resume never mixes batches of two batch
    # sizes or thread counts into one point (its recorded numerics hold for every image).
    arithmetic = {k: info["numerics"][k] for k in ("batch_size", "threads")}
    plan = hashlib.sha256(json.dumps([{k: info.get(k) for k in MATCH_KEYS}, arithmetic], sort_keys=True,
                                     default=str).encode()).hexdigest()[:16]
    parts = out_dir / f".parts-{plan}"
    if env.is_main:
        say_resuming(parts, int(cfg.num_samples), int(cfg.batch_size))
    generate_parts(sampler, denoiser, unet_meta["shape"], int(cfg.num_samples),
                   int(cfg.seed), classes, parts, cfg.labels, int(cfg.batch_size), env.device, env.rank,
                   env.world_size, progress=env.is_main, desc=f"sample {guider!r}")
    distributed.barrier()
    npz = out_dir / "samples.npz"
    if env.is_main:
        finish_point(cfg, out_dir, parts, info, t0, env, f"{guider!r}, {sampler.label}, {sampler.steps} steps",
                     denoiser.flops)
    distributed.barrier()
    return npz


def latent_decoder(cfg: DictConfig, unet, unet_meta: dict, device):
    """A latent model's decoder with its weights (None for a pixel model). The model declares its latent space:
    a DenoisingModel's `decoder`, or a snapshot's extra["latent"] = {scale, shift, vae_range, batch_size}
    (guidance.engine.latent.LatentDecoder's fields); `vae=PATH` (a local AutoencoderKL folder or file) gives the
    weights of a declared decoder, or replaces those it came with."""
    from guidance.engine.latent import LatentDecoder
    from guidance.engine.model import DenoisingModel

    declared = unet.decoder if isinstance(unet, DenoisingModel) else None
    latent = (unet_meta.get("extra") or {}).get("latent")
    if declared is None and latent:
        try:
            declared = LatentDecoder(**latent)
        except TypeError as e:
            raise GuidanceError(f"{unet_meta.get('path')} records extra.latent={latent}, which is not a latent "
                                f"standardization ({e}); re-save it with scale, shift, vae_range, batch_size") from None
    vae = cfg.get("vae")
    if vae is None:
        if declared is not None and not declared.is_loaded:
            raise GuidanceError("the model runs in the latent space of an autoencoder: pass vae=PATH (a local "
                                "diffusers AutoencoderKL folder or weights file) to decode its samples")
        return None if declared is None else declared.to(device)
    if declared is None:
        raise GuidanceError(f"vae={vae} was given but the model samples pixels (it declares no latent space); "
                            "drop vae=")
    return declared.loaded(to_absolute_path(vae), device)


def say_resuming(parts: Path, num_samples: int, batch_size: int) -> None:
    """One line when a killed run of this very point left finished batches behind."""
    done = [r for r in batch_ranges(num_samples, batch_size) if part_path(parts, *r).is_file()]
    if done:
        print(f"resuming {parts.parent}: {sum(e - s for s, e in done)} of {num_samples} samples "
              f"({len(done)} batches) are already in {parts.name}")


def point_info(cfg, guider, sampler, model, unet_meta, clf_meta) -> dict:
    """What sample_info.json records: the strategy, the sampler, the seeds and the networks (by content), and the
    model's adapter (`model`: parameterization, noise input, levels; points before it: ε on trained timesteps)."""
    return {**guider.info(), **sampler.info(), "guider": to_container(cfg.guidance),
            "sampler_config": to_container(cfg.sampler), "num_samples": int(cfg.num_samples), "seed": int(cfg.seed),
            "labels": cfg.labels, "use_ema": bool(cfg.use_ema), "num_classes": unet_meta["num_classes"],
            "unet_ckpt": unet_meta["path"], "unet_step": unet_meta["step"], "engine": ENGINE,
            "model": model.info(), "unet_model": unet_meta["target"], "weak_model": unet_meta.get("weak_model"),
            # Reuse is decided by the weights' content, not the path: a retrained snapshot in the same folder
            # (another training.seed, same step count) never passes its predecessor's samples off as its own.
            # A unet_model's: its state_dict's (model_sha256), with its config matched too.
            "unet_sha256": unet_meta["sha256"],
            "classifier_sha256": sha256_file(clf_meta["path"]) if clf_meta else None,
            "dataset": (unet_meta.get("data_config") or {}).get("name"),
            "classifier_ckpt": clf_meta["path"] if clf_meta else None,
            "classifier_step": clf_meta["step"] if clf_meta else None,
            "weak_ckpt": unet_meta.get("weak")}


def finish_point(cfg, out_dir: Path, parts: Path, info: dict, t0: float, env, what: str, flops: dict) -> Path:
    """Rank 0: merge the batches in index order, write the point (npz, grid, info last), drop the parts.
    `flops`: FLOPs per row of each pass, measured by the denoiser (recorded as flops_per_pass)."""
    images, labels, counts = merge_parts(parts, int(cfg.num_samples), int(cfg.batch_size))
    info = {**info, "cost_per_sample": cost_per_sample(counts, counts.get("images", 0), flops),
            "flops_per_pass": dict(sorted(flops.items())),
            "wall_time_s": round(time.time() - t0, 3), "device": str(env.device), "processes": env.world_size}
    npz = save_samples(out_dir, images, labels, info)
    shutil.rmtree(parts, ignore_errors=True)
    log_run(cfg, out_dir, info)
    gflop = info["cost_per_sample"].get("gflop")
    print(f"wrote {npz} ({len(images)} samples, {what}, {info['cost_per_sample']['nfe']:g} NFE/sample"
          f"{'' if gflop is None else f', {gflop:.4g} GFLOP/sample'}, {info['wall_time_s']}s)")
    return npz


def log_run(cfg: DictConfig, out_dir: Path, info: dict) -> None:
    run = init_wandb(cfg.logger, job_type="sample", config=to_container(cfg), group=cfg.sweep_name, dir=out_dir)
    scalars = {k: v for k, v in info.items() if isinstance(v, (int, float, str))}
    scalars.update({f"cost/{k}": v for k, v in info["cost_per_sample"].items()})
    log_images(run, {"grid": out_dir / "grid.png"}, step=0)
    run.log({f"info/{k}": v for k, v in scalars.items()}, step=0)
    run.summary.update(scalars)
    run.finish()
