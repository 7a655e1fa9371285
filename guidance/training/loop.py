"""Joint training of the class-conditional U-Net and the noise-aware classifier (one data stream).

Each step draws one batch of real images and
  * U-Net: L_simple (or L_hybrid) of DDPM / Improved DDPM at uniform t, with labels replaced by the null label
    `num_classes` with probability p_uncond, so the same net is conditional, unconditional and CFG-ready
    (Ho & Salimans 2022, Alg. 1);
  * classifier: cross-entropy of p_phi(y | x_t) on x_t ~ q(x_t | x_0) at its own uniform t (ADM sec. 4.1).
Separate AdamW optimizers, gradient clipping, an EMA of the U-Net (and optionally of the classifier).

Randomness is derived from (seed, step[, rank]) at every step, so a resumed run continues exactly as an
uninterrupted one would. Rank 0 alone logs and writes; every rank draws its own shard of each global batch.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from guidance.apps.common import init_wandb, log_images
from guidance.data import load_dataset, to_model_range, to_uint8
from guidance.errors import GuidanceError
from guidance.grids import save_label_grid
from guidance.sampling.rng import mixed_seed
from guidance.training import distributed
from guidance.training.checkpoint import load_training_state, save_snapshot, save_training_state
from guidance.training.ema import EMA

log = logging.getLogger(__name__)

ROLES = ("unet", "classifier")


def validate(cfg: DictConfig) -> None:
    """Catch config mistakes before anything is built; each raises one GuidanceError line."""
    t = cfg.training
    if not (t.train_unet or t.train_classifier):
        raise GuidanceError("training.train_unet and training.train_classifier are both false; enable one")
    learned = str(cfg.diffusion.model_var_type).startswith("learned")
    if t.train_unet and bool(cfg.model.get("learn_sigma", False)) != learned:
        raise GuidanceError(f"model.learn_sigma={str(bool(cfg.model.get('learn_sigma', False))).lower()} does not "
                            f"match diffusion.model_var_type={cfg.diffusion.model_var_type}; use a learned-variance "
                            "diffusion (diffusion=linear_1000_learned) with learn_sigma=true, or fixed with false")
    if not 0.0 <= t.p_uncond < 1.0:
        raise GuidanceError(f"training.p_uncond={t.p_uncond} must be in [0, 1) (0.1 in Ho & Salimans 2022)")
    if t.batch_size < 1 or t.total_steps < 1:
        raise GuidanceError("training.batch_size and training.total_steps must be >= 1")
    for key in ("ema_rate", "classifier_ema_rate"):
        rate = t.get(key)
        if rate is not None and not 0.0 <= rate < 1.0:
            raise GuidanceError(f"training.{key}={rate} must be in [0, 1) (e.g. 0.9999, or 0.999 for short runs)")


def train(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Train (or resume) into `run_dir`; returns {"step", "run_dir", "state", "unet", "classifier", "metrics"}."""
    validate(cfg)
    env = distributed.setup(cfg.get("device", "auto"))
    try:
        return _train(cfg, Path(run_dir), env)
    finally:
        distributed.cleanup()


def _train(cfg: DictConfig, run_dir: Path, env: distributed.DistEnv) -> dict[str, Any]:
    t_cfg, device = cfg.training, env.device
    if t_cfg.batch_size % env.world_size:
        raise GuidanceError(f"training.batch_size={t_cfg.batch_size} must be divisible by the {env.world_size} "
                            "processes; it is the global batch")
    local_batch = t_cfg.batch_size // env.world_size
    roles = [r for r in ROLES if t_cfg[f"train_{r}"]]
    state_path = run_dir / "checkpoints" / "state.pt"
    resolved = OmegaConf.to_container(cfg, resolve=True)

    # ---- data: the whole split lives in memory as uint8 (60k Fashion-MNIST images are 47 MB) -------------
    images, labels = load_dataset(cfg.data, "train")
    num_classes = int(cfg.data.num_classes)
    pin = device.type == "cuda"
    if pin:
        images, labels = images.pin_memory(), labels.pin_memory()

    # ---- diffusion, networks, optimizers, EMAs ---------------------------------------------------------------
    diffusion = instantiate(cfg.diffusion)
    T = diffusion.num_timesteps
    timestep_map = diffusion.timestep_map.to(device)
    model_cfgs = {"unet": resolved["model"], "classifier": resolved["classifier"]}
    lrs = {"unet": t_cfg.unet_lr, "classifier": t_cfg.classifier_lr}
    wds = {"unet": t_cfg.unet_weight_decay, "classifier": t_cfg.classifier_weight_decay}
    ema_rates = {"unet": t_cfg.ema_rate, "classifier": t_cfg.get("classifier_ema_rate")}
    models, opts, emas = {}, {}, {}
    for role in roles:
        torch.manual_seed(mixed_seed(t_cfg.seed, 1 << 21, ROLES.index(role)))  # same init on every rank
        models[role] = instantiate(model_cfgs[role], _convert_="all").to(device)
        opts[role] = torch.optim.AdamW(models[role].parameters(), lr=lrs[role], weight_decay=wds[role])
        if ema_rates[role] is not None:
            emas[role] = EMA(models[role], ema_rates[role], warmup=t_cfg.get("ema_warmup", True))
    if "unet" in models and getattr(models["unet"], "num_classes", None) != num_classes:
        raise GuidanceError(f"the U-Net has num_classes={getattr(models['unet'], 'num_classes', None)} but the data "
                            f"has {num_classes}; label dropout needs a conditional net with the null label "
                            f"{num_classes} (keep model.num_classes: ${{data.num_classes}})")

    # ---- resume ----------------------------------------------------------------------------------------------
    arch = {"diffusion": resolved["diffusion"], **{r: model_cfgs[r] for r in roles}}
    step, carried = 0, {}
    if state_path.exists():
        state = load_training_state(state_path, arch)
        step = int(state["step"])
        for role in roles:
            if role not in state["models"]:
                log.info("%s: no %s in it, that network starts from scratch", state_path, role)
                continue
            saved = state["models"][role]
            models[role].load_state_dict(saved["model"])
            opts[role].load_state_dict(saved["optimizer"])
            for group in opts[role].param_groups:  # the configured lr / weight decay win over the stored ones
                group["lr"], group["weight_decay"] = lrs[role], wds[role]
            if role in emas:
                if saved.get("ema") is not None:
                    emas[role].load_state_dict(saved["ema"])
                else:
                    log.info("%s: %s had no EMA; starting it from the current weights", state_path, role)
        # networks not trained now are carried over unchanged, so a later run can continue them
        carried = {r: s for r, s in state["models"].items() if r not in roles}
        if env.is_main:
            print(f"resuming from {state_path} at step {step}")
        if step >= t_cfg.total_steps:
            if env.is_main:
                print(f"already trained to step {step} (training.total_steps={t_cfg.total_steps}); raise "
                      f"training.total_steps to continue. Checkpoints: {run_dir}")
            return {"step": step, "run_dir": str(run_dir), "state": str(state_path), "metrics": {}, "resumed": True,
                    **{r: str(run_dir / f"{r}.pt") for r in roles}}
        del state

    wrapped = {r: DDP(m, device_ids=[device.index] if device.type == "cuda" else None) if env.distributed else m
               for r, m in models.items()}
    amp = bool(cfg.get("amp", False)) and device.type == "cuda"
    wandb_run = None
    if env.is_main:
        wandb_run = init_wandb(cfg.logger, job_type="train", config=resolved, name=run_dir.name, dir=run_dir)
        n_params = {r: sum(p.numel() for p in m.parameters()) for r, m in models.items()}
        log.info("training %s on %s (%d process(es)), params %s, %d images", "+".join(roles), device,
                 env.world_size, n_params, len(images))

    # ---- the loop --------------------------------------------------------------------------------------------
    meter = _Meter(device)
    metrics: dict[str, float] = {}
    bar = tqdm(total=t_cfg.total_steps, initial=step, desc="train", unit="step", dynamic_ncols=True,
               disable=not (env.is_main and t_cfg.get("progress", True)))
    start_step = step
    tic, tic_step = time.perf_counter(), step
    for m in models.values():
        m.train()
    while step < t_cfg.total_steps:
        # Indices: one draw per global batch from (seed, step); each rank takes its own slice of it.
        g = torch.Generator().manual_seed(mixed_seed(t_cfg.seed, step, 1 << 20))
        idx = torch.randint(len(images), (t_cfg.batch_size,), generator=g)
        idx = idx[env.rank * local_batch:(env.rank + 1) * local_batch]
        x0 = to_model_range(images[idx].to(device, non_blocking=pin))
        y = labels[idx].to(device, non_blocking=pin)
        # Everything else (t, noise, label dropout, network dropout) from the global RNG reseeded per step/rank.
        torch.manual_seed(mixed_seed(t_cfg.seed, step, env.rank))

        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp)
        if "unet" in models:
            t = torch.randint(T, (local_batch,), device=device)
            noise = torch.randn_like(x0)
            drop = torch.rand(local_batch, device=device) < t_cfg.p_uncond
            y_in = torch.where(drop, torch.full_like(y, num_classes), y)
            with autocast:
                losses = diffusion.training_losses(wrapped["unet"], x0, t, y_in, noise=noise)
            loss = losses["loss"].float().mean()
            gnorm = _step(opts["unet"], models["unet"], loss, t_cfg.grad_clip)
            meter.add("unet/loss", loss)
            meter.add("unet/mse", losses["mse"].mean())
            if "vb" in losses:
                meter.add("unet/vb", losses["vb"].mean())
            meter.add("unet/grad_norm", gnorm)
        if "classifier" in models:
            t_c = torch.randint(T, (local_batch,), device=device)  # its own draw of t
            x_t = diffusion.q_sample(x0, t_c, torch.randn_like(x0))
            with autocast:
                logits = wrapped["classifier"](x_t, timestep_map[t_c]).float()
            loss_c = F.cross_entropy(logits, y)
            gnorm_c = _step(opts["classifier"], models["classifier"], loss_c, t_cfg.grad_clip)
            meter.add("clf/loss", loss_c)
            meter.add("clf/grad_norm", gnorm_c)
            # Accuracy per noise-level quartile: q1 = least noisy t in [0, T/4), q4 = nearly pure noise.
            meter.add_quartiles((logits.argmax(1) == y).float(), t_c * 4 // T)
        for role, ema in emas.items():
            ema.update(models[role], step)
        step += 1
        bar.update(1)

        if step % t_cfg.log_every == 0 or step == t_cfg.total_steps:
            elapsed = time.perf_counter() - tic
            metrics = meter.reduce()
            metrics["throughput/img_per_s"] = (step - tic_step) * t_cfg.batch_size / max(elapsed, 1e-9)
            metrics["throughput/steps_per_s"] = (step - tic_step) / max(elapsed, 1e-9)
            for role in roles:
                metrics[f"lr/{role}"] = opts[role].param_groups[0]["lr"]
            if env.is_main:
                bar.set_postfix({k.split("/")[0]: f"{v:.4f}" for k, v in metrics.items() if k.endswith("/loss")})
                log.info("step %d: %s", step, " ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())))
                wandb_run.log(metrics, step=step)
            tic, tic_step = time.perf_counter(), step

        if "unet" in models and t_cfg.sample_every and step % t_cfg.sample_every == 0 and env.is_main:
            png = _sample_grid(cfg, models["unet"], emas.get("unet"), run_dir, step, device)
            log.info("step %d: sample grid %s", step, png)
            log_images(wandb_run, {"samples": png}, step=step)
            models["unet"].train()

        if (t_cfg.checkpoint_every and step % t_cfg.checkpoint_every == 0) or step == t_cfg.total_steps:
            if env.is_main:
                _save(cfg, resolved, arch, run_dir, state_path, step, models, opts, emas, carried)
            distributed.barrier()
    bar.close()

    out = {"step": step, "run_dir": str(run_dir), "state": str(state_path), "metrics": metrics, "resumed": start_step > 0,
           **{r: str(run_dir / f"{r}.pt") for r in roles}}
    if env.is_main:
        wandb_run.finish()
        print(f"checkpoints at step {step}: {state_path} (resume), "
              + ", ".join(str(run_dir / f"{r}.pt") for r in roles) + " (snapshots)")
    return out


def _step(opt: torch.optim.Optimizer, model: torch.nn.Module, loss: torch.Tensor, grad_clip: float) -> torch.Tensor:
    """Backward, clip the global grad norm, AdamW step. Returns the pre-clip grad norm."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    max_norm = grad_clip if grad_clip and grad_clip > 0 else math.inf
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    opt.step()
    return norm.detach()


class _Meter:
    """Sums of per-step values on the device (no host sync per step); reduced over ranks at log time."""

    def __init__(self, device: torch.device):
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self.q_correct = torch.zeros(4, device=self.device)
        self.q_total = torch.zeros(4, device=self.device)

    def add(self, key: str, value: torch.Tensor) -> None:
        self.sums[key] = self.sums.get(key, 0.0) + value.detach().float()
        self.counts[key] = self.counts.get(key, 0) + 1

    def add_quartiles(self, correct: torch.Tensor, quartile: torch.Tensor) -> None:
        self.q_correct.index_add_(0, quartile, correct)
        self.q_total.index_add_(0, quartile, torch.ones_like(correct))

    def reduce(self) -> dict[str, float]:
        keys = sorted(self.sums)
        packed = torch.stack([torch.as_tensor(self.sums[k], device=self.device) / self.counts[k] for k in keys]
                             + [*self.q_correct, *self.q_total]) if keys else torch.cat([self.q_correct, self.q_total])
        packed = distributed.all_reduce_sum(packed)
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        vals = packed.tolist()
        out = {k: v / world for k, v in zip(keys, vals)}
        correct, total = vals[len(keys):len(keys) + 4], vals[len(keys) + 4:]
        if sum(total) > 0:
            for q in range(4):
                if total[q] > 0:
                    out[f"clf/acc_q{q + 1}"] = correct[q] / total[q]
            out["clf/acc"] = sum(correct) / sum(total)
        self.reset()
        return out


@torch.no_grad()
def _sample_grid(cfg: DictConfig, unet: torch.nn.Module, ema: EMA | None, run_dir: Path, step: int,
                 device: torch.device) -> Path:
    """EMA samples, DDIM (eta 0, `sample_respacing` steps), no guidance; one row per class (at most 10 rows)."""
    from guidance.guiders import NoGuidance
    from guidance.sampling import DDIMSampler, PerImageRNG

    t_cfg = cfg.training
    model = copy.deepcopy(unet)
    if ema is not None:
        ema.copy_to(model)
    model.eval()
    num_classes, per_class = int(cfg.data.num_classes), int(t_cfg.sample_per_class)
    classes = torch.linspace(0, num_classes - 1, min(num_classes, 10)).round().long()
    y = classes.repeat_interleave(per_class).to(device)
    diffusion = instantiate(cfg.diffusion, timestep_respacing=t_cfg.sample_respacing)
    shape = (len(y), int(cfg.data.channels), int(cfg.data.image_size), int(cfg.data.image_size))
    x = DDIMSampler(diffusion, eta=0.0).sample(model, NoGuidance(null_label=num_classes), shape, y,
                                               PerImageRNG(t_cfg.seed, range(len(y)), device=device))
    return save_label_grid(to_uint8(x), y, run_dir / "samples" / f"grid_{step:07d}.png", nrow=per_class,
                           max_images=len(y))


def _save(cfg, resolved, arch, run_dir, state_path, step, models, opts, emas, carried) -> None:
    """Resumable state first, then the snapshots sampling reads (EMA weights + raw weights)."""
    state_models = dict(carried)
    for role, m in models.items():
        state_models[role] = {"model": m.state_dict(), "optimizer": opts[role].state_dict(),
                              "ema": emas[role].state_dict() if role in emas else None}
    # Recorded for inspection only: the loop reseeds from (seed, step, rank) every step, which is what makes a
    # resumed run continue exactly (and keeps ranks distinct under torchrun).
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    save_training_state(state_path, {"step": step, "models": state_models, "rng": rng, "config": resolved,
                                     "arch": arch})
    for role, m in models.items():
        target = m
        if role in emas:
            target = emas[role].copy_to(copy.deepcopy(m))
        extra = {"ema_rate": emas[role].rate if role in emas else None, "num_classes": int(cfg.data.num_classes)}
        if role == "unet":
            extra.update(p_uncond=float(cfg.training.p_uncond), null_label=int(cfg.data.num_classes))
        save_snapshot(run_dir / f"{role}.pt", role, target, resolved["model" if role == "unet" else "classifier"],
                      step, diffusion_config=resolved["diffusion"], data_config=resolved["data"], extra=extra,
                      raw_state_dict=m.state_dict())
