"""Training: the joint U-Net + classifier loop, EMA, the evaluator network's loop. Snapshots and resumable state
live in guidance.checkpoint, torchrun plumbing in guidance.distributed (sampling and metrics use them too)."""

from guidance.training.ema import EMA

__all__ = ["EMA", "train"]


def train(cfg, run_dir):
    """guidance.training.loop.train (imported lazily: it pulls in hydra, tqdm and the samplers)."""
    from guidance.training.loop import train as _train

    return _train(cfg, run_dir)
