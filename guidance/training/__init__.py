"""Training: the joint U-Net + classifier loop, EMA, snapshots vs resumable state, torchrun plumbing."""

from guidance.training.checkpoint import (ROLES, SNAPSHOT_FORMAT, STATE_FORMAT, config_diff, load_snapshot,
                                          load_training_state, save_snapshot, save_training_state)
from guidance.training.ema import EMA

__all__ = ["EMA", "save_snapshot", "load_snapshot", "save_training_state", "load_training_state", "config_diff",
           "SNAPSHOT_FORMAT", "STATE_FORMAT", "ROLES", "train"]


def train(cfg, run_dir):
    """guidance.training.loop.train (imported lazily: it pulls in hydra, tqdm and the samplers)."""
    from guidance.training.loop import train as _train

    return _train(cfg, run_dir)
