"""The joint trainer's throughput: U-Net + classifier vs each alone, and the data pipeline's share of a step.

    python -m benchmarks.bench_training                    # Fashion-MNIST, adm_tiny + tiny, batch 128, this CPU
    python -m benchmarks.bench_training --steps 60 --amp   # bf16 autocast (training.amp: CUDA only)

Runs guidance.training.train (the trainer guidance-train runs) for --steps steps in each configuration and reads
its own throughput/img_per_s over the last half of the steps (the first half holds the warm-up). The data
pipeline is the trainer's batch draw (index the in-memory uint8 images, convert to [-1, 1]), timed alone at the
same batch size in the same run: its share of a joint step says whether it could starve the model.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from hydra import compose, initialize_config_dir

from benchmarks.common import machine
from guidance.config import CONF_DIR
from guidance.data import load_dataset, to_model_range
from guidance.training import train

CONFIGS = {"joint": (True, True), "unet alone": (True, False), "classifier alone": (False, True)}


def throughput(unet: bool, classifier: bool, steps: int, batch: int, amp: bool) -> float:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[
            "model=adm_tiny", "classifier=tiny", "logger=none", f"training.total_steps={steps}",
            f"training.log_every={steps // 2}", "training.sample_every=0", f"training.checkpoint_every={steps}",
            f"training.batch_size={batch}", f"training.train_unet={unet}", f"training.train_classifier={classifier}",
            "training.progress=false", f"amp={amp}"])
    with tempfile.TemporaryDirectory() as run_dir:
        return float(train(cfg, run_dir)["metrics"]["throughput/img_per_s"])


def data_seconds(batch: int, repeats: int = 50) -> float:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        images, labels = load_dataset(compose("train").data, "train")
    g = torch.Generator().manual_seed(0)
    t = time.perf_counter()
    for _ in range(repeats):
        idx = torch.randint(len(images), (batch,), generator=g)
        to_model_range(images[idx]), labels[idx]
    return (time.perf_counter() - t) / repeats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--amp", action="store_true", help="bf16 autocast (training.amp=true; the trainer uses it on CUDA)")
    args = ap.parse_args()
    if args.amp and not torch.cuda.is_available():
        raise SystemExit("--amp: the trainer's bf16 autocast runs on CUDA only (bench_utilisation times bf16 steps on CPU)")

    print(f"training throughput, adm_tiny + tiny classifier, batch {args.batch}, amp={args.amp}, "
          f"{machine(torch.device('cpu' if not torch.cuda.is_available() else 'cuda'))}")
    ips = {k: throughput(*v, args.steps, args.batch, args.amp) for k, v in CONFIGS.items()}
    for k, v in ips.items():
        print(f"  {k:17s} {v:8.1f} img/s  ({args.batch / v * 1e3:6.1f} ms/step)")
    # One joint step costs both networks' steps: 1/joint vs 1/unet + 1/classifier.
    print(f"  joint step / (U-Net step + classifier step): "
          f"{(1 / ips['joint']) / (1 / ips['unet alone'] + 1 / ips['classifier alone']):.2f}")
    data = data_seconds(args.batch)
    print(f"  data pipeline: {data * 1e3:.2f} ms per batch = {data / (args.batch / ips['joint']):.2%} of a joint step")


if __name__ == "__main__":
    main()
