"""The evaluator network's training loop: EvaluatorNet on the clean training images, cosine-decayed Adam; the
snapshot records its test accuracy (the "evaluator" metrics extractor reads it)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from guidance.device import resolve_device
from guidance.config import build
from guidance.errors import GuidanceError
from guidance.io import check_writable_dir
from guidance.settings import TrainEvaluatorSettings, parse
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

    s = parse(TrainEvaluatorSettings, {k: v for k, v in to_container(cfg).items()
                                       if k not in ("evaluator", "data", "logger")})
    torch.manual_seed(s.seed)
    device = resolve_device(s.device)
    out_dir = Path(to_absolute_path(s.out_dir))
    check_writable_dir(out_dir, "out_dir")
    data_cfg = to_container(cfg.data)
    x_train, y_train = load_dataset(data_cfg, "train")
    x_test, y_test = load_dataset(data_cfg, "test")
    if s.subset is not None:  # the debug study: plumbing, not accuracy
        x_train, y_train, x_test, y_test = x_train[:s.subset], y_train[:s.subset], x_test[:s.subset], y_test[:s.subset]
    model = build(cfg.evaluator, _convert_="all").to(device)
    opt = torch.optim.Adam(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    steps_per_epoch = math.ceil(len(x_train) / s.batch_size)
    total = s.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    run = init_wandb(cfg.logger, job_type="train_evaluator", config=to_container(cfg), dir=out_dir)
    gen = torch.Generator().manual_seed(s.seed)

    t0, step = time.time(), 0
    with tqdm(total=total, desc="train evaluator", unit="step") as bar:
        for epoch in range(s.epochs):
            model.train()
            for idx in torch.randperm(len(x_train), generator=gen).split(s.batch_size):
                x = x_train[idx].to(device).float() / 127.5 - 1.0  # uint8 -> [-1, 1], the toolkit's range
                loss = F.cross_entropy(model(x), y_train[idx].to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                step += 1
                bar.update(1)
                if step % s.log_every == 0:
                    bar.set_postfix(loss=f"{loss.item():.3f}", epoch=epoch)
                    run.log({"train/loss": loss.item(), "train/lr": sched.get_last_lr()[0], "epoch": epoch}, step=step)
            acc = accuracy(model, x_test, y_test, device)
            run.log({"test/accuracy": acc, "epoch": epoch + 1}, step=step)
            tqdm.write(f"epoch {epoch + 1}/{s.epochs}: test accuracy {acc:.4f}")
    seconds = time.time() - t0
    if s.min_accuracy is not None and acc < s.min_accuracy:
        run.finish()
        raise GuidanceError(f"evaluator reached {acc:.4f} test accuracy < min_accuracy={s.min_accuracy}: "
                            f"train longer (epochs=...) or lower min_accuracy")
    path = out_dir / "evaluator.pt"
    extra = {"test_accuracy": acc, "epochs": s.epochs, "train_seconds": round(seconds, 1), "device": str(device)}
    save_snapshot(path, "evaluator", model, to_container(cfg.evaluator), step, data_config=data_cfg, extra=extra)
    run.summary.update({"test/accuracy": acc, "train_seconds": seconds})
    run.finish()
    print(f"evaluator: test accuracy {acc:.4f} after {s.epochs} epochs ({seconds:.0f}s) -> {path}")
    return {"path": str(path), **extra}
