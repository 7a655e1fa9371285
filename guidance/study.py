"""The whole study as library calls (guidance-main is this module behind a Hydra entry point).

Stages: (1) U-Net + noise-aware classifier: reuse snapshots from `pretrained_dir`, else train jointly (resumable);
(2) evaluator network for the metrics: reuse, else train; (3) sweep: for every (strategy, model, scale) point,
sample and evaluate; finished points are skipped; (4) the tradeoff report (tables, plots, wandb summary).
Each stage calls the same functions as the single-purpose apps, on their primary configs (guidance.config), so a
point of this study equals a `guidance-sample` job.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

from hydra.utils import get_class, to_absolute_path
from omegaconf import DictConfig, OmegaConf, open_dict
from tqdm import tqdm

from guidance import distributed
from guidance.config import CONF_DIR, compose_config
from guidance.errors import GuidanceError
from guidance.settings import StudySettings, parse

REPO_ROOT = Path(CONF_DIR).resolve().parent
# Config groups the study shares with the training app.
TRAIN_GROUPS = ("data", "model", "classifier", "diffusion", "training", "logger")


def _compose_like(config_name: str, cfg: DictConfig, groups: tuple[str, ...]) -> DictConfig:
    """Compose another app's primary config, then take over this run's (possibly overridden) group nodes."""
    sub = compose_config(config_name)
    with open_dict(sub):
        for g in groups:
            sub[g] = OmegaConf.to_container(cfg[g], resolve=True)
        for key in ("device", "amp"):
            if key in cfg and key in sub:
                sub[key] = cfg[key]
    return sub


def pretrained(cfg: DictConfig, name: str) -> Path | None:
    """A shipped snapshot: `pretrained_dir` as given (relative to the launch folder), else inside the repository."""
    if not cfg.pretrained_dir:
        return None
    for folder in (Path(to_absolute_path(cfg.pretrained_dir)), REPO_ROOT / cfg.pretrained_dir):
        if (folder / name).is_file():
            return folder / name
    return None


def check_snapshot_matches(path: Path, cfg: DictConfig, groups: tuple[str, ...]) -> None:
    """Shipped snapshots are reused only for the configuration they were trained with: no silent substitution."""
    import torch

    from guidance.checkpoint import config_diff

    try:
        snap = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated (an interrupted copy or checkout), not a snapshot
        raise GuidanceError(f"shipped snapshot {path} is unreadable ({type(e).__name__}): restore it (git checkout "
                            f"-- {path.name}) or set pretrained_dir=null to train instead") from None
    stored = {"model": snap.get("model_config"), "classifier": snap.get("model_config"),
              "diffusion": snap.get("diffusion_config")}
    for g in groups:
        ignore = {"timestep_respacing"} if g == "diffusion" else set()
        diff = [d for d in config_diff(stored[g], OmegaConf.to_container(cfg[g], resolve=True))
                if d.split(":")[0] not in ignore]
        if diff:
            raise GuidanceError(f"{path} was trained with other {g} settings ({'; '.join(diff[:3])}); "
                                "set pretrained_dir=null to train this configuration")


def ensure_models(cfg: DictConfig, out_dir: Path) -> dict[str, Path]:
    """Stage 1: the U-Net and classifier snapshots (shipped, or trained here and resumed when rerun)."""
    unet, clf = pretrained(cfg, "unet.pt"), pretrained(cfg, "classifier.pt")
    if unet and clf:
        check_snapshot_matches(unet, cfg, ("model", "diffusion"))
        check_snapshot_matches(clf, cfg, ("classifier",))
        tqdm.write(f"[models] reusing shipped snapshots {unet} and {clf}")
        return {"unet": unet, "classifier": clf}
    from guidance.training.loop import train

    if cfg.pretrained_dir:
        tqdm.write(f"[models] no unet.pt + classifier.pt in pretrained_dir={cfg.pretrained_dir}: training instead "
                   "(hours on a CPU; set pretrained_dir=null to silence this note)")
    run_dir = out_dir / "train"
    train_cfg = _compose_like("train", cfg, TRAIN_GROUPS)
    with open_dict(train_cfg):
        train_cfg.training.total_steps = cfg.study.train_steps
        train_cfg.out_dir = str(run_dir)
    tqdm.write(f"[models] training U-Net + classifier for {cfg.study.train_steps} steps into {run_dir}")
    result = train(train_cfg, run_dir)
    return {"unet": Path(result["unet"]), "classifier": Path(result["classifier"])}


def ensure_evaluator(cfg: DictConfig, chosen_by_user: bool = False) -> Path:
    """Stage 2: the dataset evaluator network the metrics extract features with (offline default).
    `chosen_by_user`: metrics.evaluator_checkpoint was set on the command line (then it is used as given)."""
    if cfg.metrics.extractor != "evaluator":
        return Path()
    shipped = pretrained(cfg, "evaluator.pt")
    configured = Path(to_absolute_path(cfg.metrics.evaluator_checkpoint))
    if shipped and not chosen_by_user:  # the shipped evaluator keeps numbers comparable across machines
        tqdm.write(f"[evaluator] reusing shipped {shipped}")
        return shipped
    subset = cfg.study.get("evaluator_subset")
    if not chosen_by_user:  # one evaluator per training length: a 1-epoch debug one never serves the CPU study
        configured = (configured.parent / (f"epochs{cfg.study.evaluator_epochs}" + (f"-n{subset}" if subset else ""))
                      / configured.name)
    if configured.is_file():
        tqdm.write(f"[evaluator] reusing {configured}")
        return configured
    from guidance.training.evaluator import train_evaluator

    ev_cfg = _compose_like("train_evaluator", cfg, ("data", "logger"))
    with open_dict(ev_cfg):
        ev_cfg.epochs = cfg.study.evaluator_epochs
        ev_cfg.subset = subset
        ev_cfg.out_dir = str(configured.parent)
        ev_cfg.device = cfg.device
    tqdm.write(f"[evaluator] training the {cfg.data.name} evaluator into {configured}")
    return Path(train_evaluator(ev_cfg)["path"])


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


def scale_key(node: DictConfig) -> str | None:
    """Which field of a strategy's config is its scale: `scale`, a wrapper's `inner.scale`, or none (`none`)."""
    if "scale" in node:
        return "scale"
    if "scale" in (node.get("inner") or {}):
        return "inner.scale"
    return None


def declared_networks(node: DictConfig) -> set[str]:
    """The networks a strategy's config declares (its class's `networks`, and a wrapped strategy's)."""
    nets = set(get_class(node._target_).networks)
    if node.get("inner") is not None and "_target_" in node.inner:
        nets |= declared_networks(node.inner)
    return nets


def _entry_config(entry, study) -> DictConfig:
    """conf/sample.yaml with this entry's strategy and sampler: composed once per sweep entry."""
    sampler = entry.get("sampler") or study.sampler
    if entry.guidance not in _options("guidance"):
        raise GuidanceError(f"study.sweep: unknown guidance '{entry.guidance}' "
                            f"(strategies: {', '.join(_options('guidance'))})")
    if sampler not in _options("sampler"):
        raise GuidanceError(f"study: unknown sampler '{sampler}' (samplers: {', '.join(_options('sampler'))})")
    return compose_config("sample", [f"guidance={entry.guidance}", f"sampler={sampler}"])


def sweep_points(cfg: DictConfig) -> list[dict]:
    """Expand study.sweep ({guidance, conditional, scales, settings, tag, sampler, respacing}) into one dict per
    point, named for its folder. `settings` sets other fields of the strategy (e.g. {schedule: cosine}); `tag` tells
    such curves apart; `sampler`/`respacing` replace the study's for this entry (a strategy tied to some samplers,
    e.g. CFG++ to DDIM and Euler). Each point carries its entry's composed sample config (`base`)."""
    points = []
    for entry in cfg.study.sweep:
        base = _entry_config(entry, cfg.study)
        node, key = base.guidance, scale_key(base.guidance)
        raw = entry.get("settings")
        settings = OmegaConf.to_container(raw, resolve=True) if raw is not None else {}
        unknown = [k for k in settings if k.split(".")[0] not in node]
        if unknown:
            raise GuidanceError(f"study.sweep: guidance={entry.guidance} has no field(s) {unknown}; it has "
                                f"{sorted(k for k in node if k != '_target_')}")
        tag = f"-{entry.tag}" if entry.get("tag") else ""
        for scale in entry.scales:
            if key is None and float(scale) != 0:  # `none` has no scale: its points are the scale-0 baselines
                raise GuidanceError(f"study.sweep: guidance={entry.guidance} takes no scale; list it with scales: [0]")
            model = "cond" if entry.get("conditional", True) else "uncond"
            points.append({"guidance": entry.guidance, "conditional": bool(entry.get("conditional", True)),
                           "scale": float(scale), "scale_key": key, "settings": settings,
                           "sampler": entry.get("sampler") or cfg.study.sampler,
                           "respacing": entry.get("respacing") or cfg.study.respacing,
                           "needs_weak": "weak" in declared_networks(node), "base": base,
                           "name": f"{entry.guidance}{tag}-{model}-s{float(scale):g}"})
    names = [p["name"] for p in points]
    if len(set(names)) != len(names):
        raise GuidanceError(f"study.sweep lists a point twice: {sorted(n for n in names if names.count(n) > 1)}")
    return points


def check_reference_data(cfg: DictConfig) -> None:
    """The reference split the metrics compare against must be readable (one-line error naming the fixes)."""
    from guidance.data import load_dataset

    load_dataset(cfg.data, cfg.metrics.get("reference_split", "train"))


def sample_config(cfg: DictConfig, point: dict, models: dict[str, Path], sweep_name: str) -> DictConfig:
    """The point as a guidance-sample config: its entry's composed config with the study's settings."""
    s = cfg.study
    scfg = copy.deepcopy(point["base"])
    with open_dict(scfg):
        scfg.logger = OmegaConf.to_container(cfg.logger, resolve=True)
        scfg.unet_ckpt, scfg.classifier_ckpt = str(models["unet"]), str(models["classifier"])
        scfg.num_samples, scfg.batch_size, scfg.seed, scfg.labels = s.num_samples, s.batch_size, s.seed, s.labels
        scfg.device, scfg.sweep_name = cfg.device, sweep_name
        scfg.precision, scfg.compile = s.get("precision", "auto"), bool(s.get("compile", False))
        scfg.sampler.respacing = point["respacing"]
        scfg.weak_ckpt = str(models["weak"]) if models.get("weak") else None
        if point["scale_key"]:
            OmegaConf.update(scfg.guidance, point["scale_key"], point["scale"])
        if "conditional" in scfg.guidance:
            scfg.guidance.conditional = point["conditional"]
        for key, value in point.get("settings", {}).items():
            OmegaConf.update(scfg.guidance, key, value, merge=True)
    return scfg


def ensure_weak(cfg: DictConfig, points: list[dict]) -> Path | None:
    """Autoguidance's weak U-Net: study.weak_ckpt, else the shipped unet_weak.pt; only when a point needs it."""
    if not any(p["needs_weak"] for p in points):
        return None
    given = cfg.study.get("weak_ckpt")
    path = Path(to_absolute_path(given)) if given else pretrained(cfg, "unet_weak.pt")
    if path is None or not path.is_file():
        where = given or "no unet_weak.pt in pretrained_dir"
        raise GuidanceError(f"study.sweep has autoguidance but no weak U-Net ({where}): train one with "
                            "guidance-train experiment=weak_unet and set study.weak_ckpt=PATH")
    tqdm.write(f"[models] autoguidance's weak U-Net: {path}")
    return path


def study_metrics(cfg: DictConfig, evaluator: Path):
    """The study's metrics settings, parsed once for every point (with the evaluator stage 2 chose)."""
    from guidance.metrics.evaluate import metrics_config

    m = OmegaConf.to_container(cfg.metrics, resolve=True)
    if m.get("extractor") == "evaluator":
        m["evaluator_checkpoint"] = str(evaluator)
    return metrics_config(m)


def sweep_name_of(cfg: DictConfig) -> str:
    """One wandb group per study: its sample runs and the tradeoff summary run."""
    return f"{cfg.data.name}-{cfg.study.name}"


def say_precision(cfg: DictConfig, device) -> str | None:
    """Flag a run whose sampling precision is not the one the study's published tables were made in (precision=auto
    resolves per CPU: bf16 with AMX/AVX512-bf16, else fp32, and the precision moves FID). Returns the note."""
    from guidance.sampling.runtime import Runtime

    published = cfg.study.get("published_precision")
    here = Runtime.resolve(cfg.study.precision, "auto", False, device).precision
    if published is None or here == published:
        return None
    how = "on this machine" if cfg.study.precision == "auto" else "as set"
    note = (f"[precision] this run samples in {here} (study.precision={cfg.study.precision} {how}) but the "
            f"published tables of study '{cfg.study.name}' were made in {published}: its FIDs are not comparable "
            f"digit for digit (README, 'The main job'); study.precision={published} reproduces them (slowly where the "
            "CPU has no bf16 units)")
    tqdm.write(note)
    return note


def say_estimate(cfg: DictConfig, out_dir: Path, points: list[dict], models: dict[str, Path], device) -> float:
    """One line before the sweep: how long its sampling will take here (guidance.estimate: the points' exact
    network rows x a short calibration of each network on this machine). Points with samples already in their
    folder are left out (reused in seconds). Returns the estimate in seconds."""
    from guidance.checkpoint import load_snapshot
    from guidance.estimate import calibrate, network_rows, sweep_seconds
    from guidance.sampling.runtime import Runtime

    todo = [p for p in points if not (out_dir / "sweep" / p["name"] / "samples.npz").is_file()]
    if not todo:
        return 0.0
    unet, meta = load_snapshot(models["unet"], role="unet", map_location=device)
    mc, name = meta["model_config"], sweep_name_of(cfg)
    rows = [(int(cfg.study.num_samples), network_rows(sample_config(cfg, p, models, name), meta["diffusion_config"]))
            for p in todo]
    networks = {"unet": unet}
    if any(r.get("classifier_forward") for _, r in rows):
        networks["classifier"] = load_snapshot(models["classifier"], role="classifier", map_location=device)[0]
    if any(r.get("weak") for _, r in rows):
        networks["weak"] = load_snapshot(models["weak"], role="unet", map_location=device)[0]
    runtime = Runtime.resolve(cfg.study.precision, "auto", False, device)
    batch = int(cfg.study.batch_size)
    rate = calibrate(networks, (mc["in_channels"], mc["image_size"], mc["image_size"]), batch, runtime,
                     mc["num_classes"], device)
    seconds = sweep_seconds(rows, rate)
    per_image = ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in rate.items())
    tqdm.write(f"[estimate] sampling {len(todo)} points will take about {seconds / 60:.0f} min on this machine "
               f"({runtime.precision}, batch {batch}; measured per image and pass: {per_image}"
               + ("; torch.compile runs faster after ~30 s of compilation per network and point" if cfg.study.compile
                  else "") + "); metrics add about a tenth")
    return seconds


def run_sweep(cfg: DictConfig, out_dir: Path, points: list[dict], models: dict[str, Path], evaluator: Path,
              is_main: bool = True) -> Path:
    """Stage 3: sample + evaluate every point. Samples are reused when their sampling settings match
    (run_sample checks), metrics when they are newer than the samples and made with the same metrics settings.
    Under torchrun every rank samples its share of each point (run_sample); rank 0 alone evaluates."""
    from guidance.metrics.evaluate import evaluate_folder_if_stale
    from guidance.metrics.registry import METRICS
    from guidance.sampling.point import run_sample

    sweep_dir, sweep_name = out_dir / "sweep", sweep_name_of(cfg)
    m_cfg = study_metrics(cfg, evaluator)
    tqdm.write(f"[sweep] {len(points)} points ({cfg.study.num_samples} samples each, sampler {cfg.study.sampler} "
               f"{cfg.study.respacing}); samples and metrics are reused where their settings match")
    reused = 0
    with tqdm(points, desc="sweep", unit="point", disable=not is_main) as bar:
        for p in bar:
            bar.set_postfix_str(p["name"])
            folder = sweep_dir / p["name"]
            t0 = time.time()
            run_sample(sample_config(cfg, p, models, sweep_name), folder)  # skips when its samples match
            if not is_main:
                continue
            metrics = evaluate_folder_if_stale(folder, m_cfg, cfg.data)
            if metrics is None:
                reused += 1
                continue
            shown = "  ".join(f"{m.label} {metrics[m.key]:.{m.decimals}f}" for m in METRICS.values()
                              if m.column != "csv" and m.key in metrics)  # the tables' columns, as the registry says
            tqdm.write(f"[sweep] {p['name']}: {shown}  ({time.time() - t0:.0f}s)")
    tqdm.write(f"[sweep] {reused} of {len(points)} points were already evaluated with these settings")
    return sweep_dir


def run_study(cfg: DictConfig, out_dir: Path, env: distributed.DistEnv, evaluator_chosen: bool = False) -> dict:
    """All four stages into out_dir; returns the report's paths (rank 0) or {} (other ranks)."""
    from guidance.guiders import describe_point
    from guidance.metrics.evaluate import metrics_config
    from guidance.report import build_report

    t0 = time.time()
    parse(StudySettings, cfg.study, "study.")  # bad counts fail before any training
    stages = ["models", "evaluator", "sweep", "report"]
    tqdm.write(f"guidance-main: study '{cfg.study.name}' on {cfg.data.name} -> {out_dir}  (stages: {' -> '.join(stages)})"
               + (f"  [{env.world_size} processes]" if env.distributed else ""))
    points = sweep_points(cfg)  # a bad sweep spec fails before any training
    check_reference_data(cfg)   # and a missing dataset before any sampling
    metrics_config(cfg.metrics)  # and bad metrics settings (metrics.compute=[]) before any training
    models = ensure_models(cfg, out_dir)
    models["weak"] = ensure_weak(cfg, points)
    evaluator = ensure_evaluator(cfg, evaluator_chosen) if env.is_main else Path()
    if env.is_main:
        say_precision(cfg, env.device)
        say_estimate(cfg, out_dir, points, models, env.device)
    sweep_dir = run_sweep(cfg, out_dir, points, models, evaluator, env.is_main)
    paths = {}
    if env.is_main:
        paths = build_report(sweep_dir, out_dir / "report", describe=describe_point, logger_cfg=cfg.logger,
                             name=sweep_name_of(cfg))
        tqdm.write(f"[report] {paths['md']}\n[report] plots in {Path(paths['fid_vs_scale']).parent}")
    distributed.barrier()
    tqdm.write(f"guidance-main: done in {(time.time() - t0) / 60:.1f} min")
    return paths
