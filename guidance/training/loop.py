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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from guidance.tracking import init_wandb, log_images
from guidance.data import load_dataset, to_model_range, to_uint8
from guidance.config import build
from guidance.errors import GuidanceError
from guidance.grids import save_label_grid
from guidance.sampling.rng import mixed_seed
from guidance.settings import TrainingSettings, parse
from guidance import distributed
from guidance.checkpoint import load_training_state, save_snapshot, save_training_state
from guidance.training.ema import EMA

log = logging.getLogger(__name__)

ROLES = ("unet", "classifier")


def validate(cfg: DictConfig) -> None:
    """Catch config mistakes before anything is built; each raises one GuidanceError line."""
    t = parse(TrainingSettings, cfg.training, "training.")
    learned = str(cfg.diffusion.model_var_type).startswith("learned")
    if t.train_unet and bool(cfg.model.get("learn_sigma", False)) != learned:
        raise GuidanceError(f"model.learn_sigma={str(bool(cfg.model.get('learn_sigma', False))).lower()} does not "
                            f"match diffusion.model_var_type={cfg.diffusion.model_var_type}; use a learned-variance "
                            "diffusion (diffusion=linear_1000_learned) with learn_sigma=true, or fixed with false")


def planned_arch(cfg: DictConfig) -> dict:
    """What a training state must match to be resumed: the diffusion and the networks trained now."""
    roles = {"unet": "model", "classifier": "classifier"}
    return {"diffusion": OmegaConf.to_container(cfg.diffusion, resolve=True),
            **{r: OmegaConf.to_container(cfg[g], resolve=True) for r, g in roles.items() if cfg.training[f"train_{r}"]}}


def check_resumable(cfg: DictConfig, run_dir: str | Path) -> None:
    """A run folder holding another architecture's state is refused before anything (Hydra's config files
    included) is written into it."""
    validate(cfg)
    state = Path(run_dir) / "checkpoints" / "state.pt"
    if state.is_file():
        load_training_state(state, planned_arch(cfg))


def train(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Train (or resume) into `run_dir`; returns {"step", "run_dir", "state", "unet", "classifier", "metrics"}."""
    validate(cfg)
    joined_here = not distributed.initialized()  # under guidance-main the group outlives training
    env = distributed.setup(cfg.get("device", "auto"))
    try:
        return _train(cfg, Path(run_dir), env)
    finally:
        if joined_here:
            distributed.cleanup()


@dataclass
class _Run:
    """Everything one training run shares between its phases (built once by `_setup`)."""

    cfg: DictConfig
    env: distributed.DistEnv
    run_dir: Path
    resolved: dict
    roles: list[str]
    images: torch.Tensor
    labels: torch.Tensor
    pin: bool
    diffusion: Any
    timestep_map: torch.Tensor  # respaced index -> original t, on the device (the classifier's t input)
    models: dict[str, torch.nn.Module] = field(default_factory=dict)
    opts: dict[str, torch.optim.Optimizer] = field(default_factory=dict)
    emas: dict[str, EMA] = field(default_factory=dict)
    lrs: dict[str, float] = field(default_factory=dict)
    wds: dict[str, float] = field(default_factory=dict)
    arch: dict = field(default_factory=dict)
    step: int = 0
    carried: dict = field(default_factory=dict)  # saved networks not trained now
    wrapped: dict[str, torch.nn.Module] = field(default_factory=dict)  # DDP-wrapped under torchrun
    amp: bool = False
    wandb_run: Any = None

    @property
    def t_cfg(self) -> DictConfig:
        return self.cfg.training

    @property
    def device(self) -> torch.device:
        return self.env.device

    @property
    def num_classes(self) -> int:
        return int(self.cfg.data.num_classes)

    @property
    def local_batch(self) -> int:
        return self.t_cfg.batch_size // self.env.world_size

    @property
    def state_path(self) -> Path:
        return self.run_dir / "checkpoints" / "state.pt"

    def result(self, metrics: dict[str, float], resumed: bool) -> dict[str, Any]:
        return {"step": self.step, "run_dir": str(self.run_dir), "state": str(self.state_path), "metrics": metrics,
                "resumed": resumed, **{r: str(self.run_dir / f"{r}.pt") for r in self.roles}}


def _train(cfg: DictConfig, run_dir: Path, env: distributed.DistEnv) -> dict[str, Any]:
    if cfg.training.batch_size % env.world_size:
        raise GuidanceError(f"training.batch_size={cfg.training.batch_size} must be divisible by the "
                            f"{env.world_size} processes; it is the global batch")
    run = _setup(cfg, run_dir, env)
    _build_networks(run)
    if run.state_path.exists() and _resume(run):  # already trained to total_steps
        if env.is_main and not _snapshots_current(run):
            print(f"snapshots in {run.run_dir} are missing or stale: rewriting them from {run.state_path}")
            _write_snapshots(run.cfg, run.resolved, run.run_dir, run.step, run.models, run.emas)
        return run.result({}, resumed=True)
    _start(run)
    start_step = run.step
    metrics = _loop(run)
    out = run.result(metrics, resumed=start_step > 0)
    if env.is_main:
        run.wandb_run.finish()
        print(f"checkpoints at step {run.step}: {run.state_path} (resume), "
              + ", ".join(str(run_dir / f"{r}.pt") for r in run.roles) + " (snapshots)")
    return out


def _setup(cfg: DictConfig, run_dir: Path, env: distributed.DistEnv) -> _Run:
    """Data and diffusion; the networks come next (`_build_networks`)."""
    roles = [r for r in ROLES if cfg.training[f"train_{r}"]]
    resolved = OmegaConf.to_container(cfg, resolve=True)
    # the whole split lives in memory as uint8 (60k Fashion-MNIST images are 47 MB)
    images, labels = load_dataset(cfg.data, "train")
    pin = env.device.type == "cuda"
    if pin:
        images, labels = images.pin_memory(), labels.pin_memory()
    diffusion = build(cfg.diffusion)
    return _Run(cfg=cfg, env=env, run_dir=run_dir, resolved=resolved, roles=roles, images=images, labels=labels,
                pin=pin, diffusion=diffusion, timestep_map=diffusion.timestep_map.to(env.device))


def _build_networks(run: _Run) -> None:
    """Networks, AdamW optimizers and EMAs of the roles trained now, each seeded the same on every rank."""
    t_cfg, resolved = run.t_cfg, run.resolved
    model_cfgs = {"unet": resolved["model"], "classifier": resolved["classifier"]}
    run.lrs = {"unet": t_cfg.unet_lr, "classifier": t_cfg.classifier_lr}
    run.wds = {"unet": t_cfg.unet_weight_decay, "classifier": t_cfg.classifier_weight_decay}
    ema_rates = {"unet": t_cfg.ema_rate, "classifier": t_cfg.get("classifier_ema_rate")}
    for role in run.roles:
        torch.manual_seed(mixed_seed(t_cfg.seed, 1 << 21, ROLES.index(role)))  # same init on every rank
        model = run.models[role] = build(model_cfgs[role], _convert_="all").to(run.device)
        run.opts[role] = torch.optim.AdamW(model.parameters(), lr=run.lrs[role], weight_decay=run.wds[role])
        if ema_rates[role] is not None:
            run.emas[role] = EMA(model, ema_rates[role], warmup=t_cfg.get("ema_warmup", True))
    num_classes = run.num_classes
    if "unet" in run.models and getattr(run.models["unet"], "num_classes", None) != num_classes:
        raise GuidanceError(f"the U-Net has num_classes={getattr(run.models['unet'], 'num_classes', None)} but the "
                            f"data has {num_classes}; label dropout needs a conditional net with the null label "
                            f"{num_classes} (keep model.num_classes: ${{data.num_classes}})")
    run.arch = planned_arch(run.cfg)


def _resume(run: _Run) -> bool:
    """Load state.pt into the networks trained now; True when it is already at training.total_steps."""
    state_path, total = run.state_path, run.t_cfg.total_steps
    state = load_training_state(state_path, run.arch)
    run.step = int(state["step"])
    for role in run.roles:
        if role not in state["models"]:
            log.info("%s: no %s in it, that network starts from scratch", state_path, role)
            continue
        _load_role(run, role, state["models"][role])
    # networks not trained now are carried over unchanged, so a later run can continue them
    run.carried = {r: s for r, s in state["models"].items() if r not in run.roles}
    if run.env.is_main:
        print(f"resuming from {state_path} at step {run.step}")
        saved_world = int(state.get("world_size", run.env.world_size))
        if saved_world != run.env.world_size:  # each rank reseeds from (seed, step, rank): the batches change
            print(f"note: {state_path} was written by {saved_world} process(es) and resumes in {run.env.world_size}; "
                  f"the continuation is valid but not bitwise the run {saved_world} processes would have made")
    if run.step >= total:
        if run.env.is_main:
            print(f"already trained to step {run.step} (training.total_steps={total}); raise "
                  f"training.total_steps to continue. Checkpoints: {run.run_dir}")
        return True
    return False


def _load_role(run: _Run, role: str, saved: dict) -> None:
    run.models[role].load_state_dict(saved["model"])
    run.opts[role].load_state_dict(saved["optimizer"])
    for group in run.opts[role].param_groups:  # the configured lr / weight decay win over the stored ones
        group["lr"], group["weight_decay"] = run.lrs[role], run.wds[role]
    if role in run.emas:
        if saved.get("ema") is not None:
            run.emas[role].load_state_dict(saved["ema"])
        else:
            log.info("%s: %s had no EMA; starting it from the current weights", run.state_path, role)


def _start(run: _Run) -> None:
    """DDP wrapping, autocast switch, and (rank 0) wandb and the opening log line."""
    env, device = run.env, run.device
    run.wrapped = {r: DDP(m, device_ids=[device.index] if device.type == "cuda" else None) if env.distributed else m
                   for r, m in run.models.items()}
    run.amp = bool(run.cfg.get("amp", False)) and device.type == "cuda"
    if env.is_main:
        run.wandb_run = init_wandb(run.cfg.logger, job_type="train", config=run.resolved, name=run.run_dir.name,
                                   dir=run.run_dir)
        n_params = {r: sum(p.numel() for p in m.parameters()) for r, m in run.models.items()}
        log.info("training %s on %s (%d process(es)), params %s, %d images", "+".join(run.roles), device,
                 env.world_size, n_params, len(run.images))


def _loop(run: _Run) -> dict[str, float]:
    """Steps from run.step to training.total_steps, with logging, sample grids and checkpoints on cadence."""
    t_cfg, env = run.t_cfg, run.env
    meter = _Meter(run.device)
    metrics: dict[str, float] = {}
    bar = tqdm(total=t_cfg.total_steps, initial=run.step, desc="train", unit="step", dynamic_ncols=True,
               disable=not (env.is_main and t_cfg.get("progress", True)))
    tic, tic_step = time.perf_counter(), run.step
    for m in run.models.values():
        m.train()
    while run.step < t_cfg.total_steps:
        x0, y = _batch(run)
        # Everything else (t, noise, label dropout, network dropout) from the global RNG reseeded per step/rank.
        torch.manual_seed(mixed_seed(t_cfg.seed, run.step, env.rank))
        _train_step(run, x0, y, meter)
        run.step += 1
        bar.update(1)
        if run.step % t_cfg.log_every == 0 or run.step == t_cfg.total_steps:
            metrics = _log_metrics(run, meter, bar, time.perf_counter() - tic, run.step - tic_step)
            tic, tic_step = time.perf_counter(), run.step
        if "unet" in run.models and t_cfg.sample_every and run.step % t_cfg.sample_every == 0 and env.is_main:
            png = _sample_grid(run.cfg, run.models["unet"], run.emas.get("unet"), run.run_dir, run.step, run.device)
            log.info("step %d: sample grid %s", run.step, png)
            log_images(run.wandb_run, {"samples": png}, step=run.step)
            run.models["unet"].train()
        if (t_cfg.checkpoint_every and run.step % t_cfg.checkpoint_every == 0) or run.step == t_cfg.total_steps:
            if env.is_main:
                _save(run.cfg, run.resolved, run.arch, run.run_dir, run.state_path, run.step, run.models, run.opts,
                      run.emas, run.carried, run.env.world_size)
            distributed.barrier()
    bar.close()
    return metrics


def _batch(run: _Run) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's shard of the step's global batch: x0 in model range and its labels."""
    t_cfg, local_batch = run.t_cfg, run.local_batch
    # Indices: one draw per global batch from (seed, step); each rank takes its own slice of it.
    g = torch.Generator().manual_seed(mixed_seed(t_cfg.seed, run.step, 1 << 20))
    idx = torch.randint(len(run.images), (t_cfg.batch_size,), generator=g)
    idx = idx[run.env.rank * local_batch:(run.env.rank + 1) * local_batch]
    x0 = to_model_range(run.images[idx].to(run.device, non_blocking=run.pin))
    y = run.labels[idx].to(run.device, non_blocking=run.pin)
    return x0, y


def _train_step(run: _Run, x0: torch.Tensor, y: torch.Tensor, meter: _Meter) -> None:
    """One update of each trained network on the batch (U-Net first: the RNG draws follow that order), then EMAs."""
    autocast = torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.amp)
    if "unet" in run.models:
        _unet_step(run, x0, y, meter, autocast)
    if "classifier" in run.models:
        _classifier_step(run, x0, y, meter, autocast)
    for role, ema in run.emas.items():
        ema.update(run.models[role], run.step)


def _unet_step(run: _Run, x0: torch.Tensor, y: torch.Tensor, meter: _Meter, autocast) -> None:
    """Diffusion loss at uniform t, labels dropped to the null label with probability p_uncond."""
    t_cfg, device, local_batch = run.t_cfg, run.device, run.local_batch
    t = torch.randint(run.diffusion.num_timesteps, (local_batch,), device=device)
    noise = torch.randn_like(x0)
    drop = torch.rand(local_batch, device=device) < t_cfg.p_uncond
    y_in = torch.where(drop, torch.full_like(y, run.num_classes), y)
    with autocast:
        losses = run.diffusion.training_losses(run.wrapped["unet"], x0, t, y_in, noise=noise)
    loss = losses["loss"].float().mean()
    gnorm = _step(run.opts["unet"], run.models["unet"], loss, t_cfg.grad_clip)
    meter.add("unet/loss", loss)
    meter.add("unet/mse", losses["mse"].mean())
    if "vb" in losses:
        meter.add("unet/vb", losses["vb"].mean())
    meter.add("unet/grad_norm", gnorm)


def _classifier_step(run: _Run, x0: torch.Tensor, y: torch.Tensor, meter: _Meter, autocast) -> None:
    """Cross-entropy of p_phi(y | x_t) at the classifier's own uniform t."""
    T, device = run.diffusion.num_timesteps, run.device
    t_c = torch.randint(T, (run.local_batch,), device=device)  # its own draw of t
    x_t = run.diffusion.q_sample(x0, t_c, torch.randn_like(x0))
    with autocast:
        logits = run.wrapped["classifier"](x_t, run.timestep_map[t_c]).float()
    loss_c = F.cross_entropy(logits, y)
    gnorm_c = _step(run.opts["classifier"], run.models["classifier"], loss_c, run.t_cfg.grad_clip)
    meter.add("clf/loss", loss_c)
    meter.add("clf/grad_norm", gnorm_c)
    # Accuracy per noise-level quartile: q1 = least noisy t in [0, T/4), q4 = nearly pure noise.
    meter.add_quartiles((logits.argmax(1) == y).float(), t_c * 4 // T)


def _log_metrics(run: _Run, meter: _Meter, bar: tqdm, elapsed: float, steps: int) -> dict[str, float]:
    """Reduce the meter over ranks, add throughput and lrs; rank 0 shows them (bar, log, wandb)."""
    metrics = meter.reduce()
    metrics["throughput/img_per_s"] = steps * run.t_cfg.batch_size / max(elapsed, 1e-9)
    metrics["throughput/steps_per_s"] = steps / max(elapsed, 1e-9)
    for role in run.roles:
        metrics[f"lr/{role}"] = run.opts[role].param_groups[0]["lr"]
    if run.env.is_main:
        bar.set_postfix({k.split("/")[0]: f"{v:.4f}" for k, v in metrics.items() if k.endswith("/loss")})
        log.info("step %d: %s", run.step, " ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())))
        run.wandb_run.log(metrics, step=run.step)
    return metrics


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
    from guidance.sampling import DDIMSampler, GuidedDenoiser, PerImageRNG

    t_cfg = cfg.training
    model = copy.deepcopy(unet)
    if ema is not None:
        ema.copy_to(model)
    model.eval()
    num_classes, per_class = int(cfg.data.num_classes), int(t_cfg.sample_per_class)
    classes = torch.linspace(0, num_classes - 1, min(num_classes, 10)).round().long()
    y = classes.repeat_interleave(per_class).to(device)
    # the training (un-respaced) diffusion; the sampler respaces it to `sample_respacing` steps itself
    sampler = DDIMSampler(build(cfg.diffusion), respacing=t_cfg.sample_respacing, eta=0.0)
    denoiser = GuidedDenoiser(NoGuidance(), {"unet": model}, null_label=num_classes)
    shape = (len(y), int(cfg.data.channels), int(cfg.data.image_size), int(cfg.data.image_size))
    x = sampler.sample(denoiser, shape, y, PerImageRNG(t_cfg.seed, range(len(y)), device=device))
    return save_label_grid(to_uint8(x), y, run_dir / "samples" / f"grid_{step:07d}.png", nrow=per_class,
                           max_images=len(y))


def _save(cfg, resolved, arch, run_dir, state_path, step, models, opts, emas, carried, world_size=1) -> None:
    """The snapshots sampling reads (EMA weights + raw weights) FIRST, then the resumable state: a state at step N
    implies its snapshots were written (a crash in between leaves an older state, which resumes and rewrites)."""
    _write_snapshots(cfg, resolved, run_dir, step, models, emas)
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
                                     "arch": arch, "world_size": int(world_size)})


def _write_snapshots(cfg, resolved, run_dir, step, models, emas) -> None:
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


def _snapshots_current(run) -> bool:
    """Whether every snapshot of this run exists, reads, and holds the state's step."""
    for role in run.roles:
        try:
            snap = torch.load(run.run_dir / f"{role}.pt", map_location="cpu", weights_only=False)
        except Exception:  # missing, truncated, not ours: rewrite it
            return False
        if not isinstance(snap, dict) or snap.get("step") != run.step:
            return False
    return True
