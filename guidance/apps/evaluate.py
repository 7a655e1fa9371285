"""guidance-evaluate: samples.npz vs a reference set -> metrics.json beside the samples (+ wandb).

    guidance-evaluate samples=runs/sample/<job>                      # evaluator features, data's train split
    guidance-evaluate samples=batch.npz reference_npz=ref.npz metrics=inception
"""

from __future__ import annotations


from hydra.utils import to_absolute_path
from omegaconf import DictConfig

from guidance.apps.common import hydra_app, to_container
from guidance.tracking import init_wandb
from guidance.errors import GuidanceError
from guidance.io import check_writable_dir
from guidance.metrics.evaluate import evaluate_folder, export_reference_batch, find_samples_npz
from guidance.metrics.registry import METRICS


def _abs(p: str | None) -> str | None:
    return to_absolute_path(p) if p else None


def evaluate(cfg: DictConfig) -> dict:
    metrics_cfg = to_container(cfg.metrics)
    # Relative paths are relative to where the command was run (Hydra may change the working directory).
    for key in ("evaluator_checkpoint", "inception_weights", "dinov2_weights", "clip_weights", "cache_dir"):
        metrics_cfg[key] = _abs(metrics_cfg.get(key))
    if cfg.get("write_reference"):
        path = export_reference_batch(_abs(cfg.write_reference), metrics_cfg, to_container(cfg.data),
                                      _abs(cfg.reference_npz))
        print(f"reference batch (ADM layout, {metrics_cfg['extractor']} statistics) -> {path}")
        if not cfg.samples:
            return {"reference_batch": str(path)}
    if not cfg.samples:
        raise GuidanceError("pass samples=<samples.npz or a sample job's folder> (or write_reference=<path> alone)")
    npz = find_samples_npz(to_absolute_path(cfg.samples))
    check_writable_dir(npz.parent, "samples")  # metrics.json goes beside them: refuse before the metric work
    out = evaluate_folder(npz, metrics_cfg, to_container(cfg.data), _abs(cfg.reference_npz))
    run = init_wandb(cfg.logger, job_type="evaluate", config=to_container(cfg), dir=npz.parent)
    scalars = {f"metrics/{k}": v for k, v in out.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    run.log(scalars)
    run.summary.update(scalars)
    run.finish()
    print(f"[{out['extractor']}] " + "  ".join(f"{m.key}={out[m.key]:.4g}" for m in METRICS.values() if m.key in out))
    print(f"metrics -> {npz.parent / 'metrics.json'}")
    return out


@hydra_app("evaluate")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
