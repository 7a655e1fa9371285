"""The evaluator network's training loop: EvaluatorNet on the clean training images, cosine-decayed Adam; the
snapshot records its test accuracy (the "evaluator" metrics extractor reads it)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from guidance.device import resolve_device
from guidance.errors import GuidanceError
from guidance.tracking import init_wandb


def to_container(cfg) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


@torch.no_grad()
def accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, device: torch.device,
             batch_size: int = 1000) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].to(device).float() / 127.5 - 1.0
        correct += (model(x).argmax(1).cpu() == labels[i:i + batch_size]).sum().item()
    return correct / len(images)


def train_evaluator(cfg: DictConfig) -> dict:
    from guidance.data import load_dataset
    from guidance.checkpoint import save_snapshot

    if not all(isinstance(cfg[k], int) and cfg[k] >= 1 for k in ("epochs", "batch_size")):
        raise GuidanceError(f"epochs={cfg.epochs} and batch_size={cfg.batch_size} must be positive integers")
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    data_cfg = to_container(cfg.data)
    x_train, y_train = load_dataset(data_cfg, "train")
    x_test, y_test = load_dataset(data_cfg, "test")
    model = instantiate(cfg.evaluator, _convert_="all").to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(x_train) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    out_dir = Path(to_absolute_path(cfg.out_dir))
    run = init_wandb(cfg.logger, job_type="train_evaluator", config=to_container(cfg), dir=out_dir)
    gen = torch.Generator().manual_seed(cfg.seed)

    t0, step = time.time(), 0
    with tqdm(total=total, desc="train evaluator", unit="step") as bar:
        for epoch in range(cfg.epochs):
            model.train()
            for idx in torch.randperm(len(x_train), generator=gen).split(cfg.batch_size):
                x = x_train[idx].to(device).float() / 127.5 - 1.0  # uint8 -> [-1, 1], the toolkit's range
                loss = F.cross_entropy(model(x), y_train[idx].to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                step += 1
                bar.update(1)
                if step % cfg.log_every == 0:
                    bar.set_postfix(loss=f"{loss.item():.3f}", epoch=epoch)
                    run.log({"train/loss": loss.item(), "train/lr": sched.get_last_lr()[0], "epoch": epoch}, step=step)
            acc = accuracy(model, x_test, y_test, device)
            run.log({"test/accuracy": acc, "epoch": epoch + 1}, step=step)
            tqdm.write(f"epoch {epoch + 1}/{cfg.epochs}: test accuracy {acc:.4f}")
    seconds = time.time() - t0
    if cfg.min_accuracy is not None and acc < cfg.min_accuracy:
        run.finish()
        raise GuidanceError(f"evaluator reached {acc:.4f} test accuracy < min_accuracy={cfg.min_accuracy}: "
                            f"train longer (epochs=...) or lower min_accuracy")
    path = out_dir / "evaluator.pt"
    extra = {"test_accuracy": acc, "epochs": cfg.epochs, "train_seconds": round(seconds, 1), "device": str(device)}
    save_snapshot(path, "evaluator", model, to_container(cfg.evaluator), step, data_config=data_cfg, extra=extra)
    run.summary.update({"test/accuracy": acc, "train_seconds": seconds})
    run.finish()
    print(f"evaluator: test accuracy {acc:.4f} after {cfg.epochs} epochs ({seconds:.0f}s) -> {path}")
    return {"path": str(path), **extra}
