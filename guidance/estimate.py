"""How long a sweep's sampling will take on THIS machine, said before it starts (issue 22: no user waits blind).

    rows = network_rows(sample_cfg, unet_meta)      # rows per sample through each network, from the chain itself
    rate = calibrate(networks, shape, batch, runtime)  # measured seconds per row of each network, here, now
    seconds = Σ_points num_samples × Σ_network rows × seconds per row

The rows are exact, not assumed: the point's own guider is asked for its requests at every evaluation of its own
sampler's chain (what the denoiser will run: CFG's two passes per guided step, an interval's one outside it,
classifier forward and backward). The rate is a short calibration: one warm-up and the best of two timed passes of
each network at the sweep's batch size, eager, in the sweep's precision (a compiled network runs faster once its
~30 s compilation is paid: the line says so). Metrics, compilation and reused points are not in the estimate.
"""

from __future__ import annotations

import time
from collections import Counter

import torch
import torch.nn.functional as F

from guidance.config import build
from guidance.diffusion import create_diffusion
from guidance.engine import ClassifierGrad, Eval


def network_rows(sample_cfg, diffusion_config: dict) -> Counter:
    """Rows per sample through each network ("unet", "weak", "classifier_forward", "classifier_backward")."""
    guider = build(sample_cfg.guidance)
    base = create_diffusion(**{k: v for k, v in diffusion_config.items() if k not in ("_target_", "timestep_respacing")})
    sampler = build(sample_cfg.sampler, diffusion=base)
    guider.reset(1)
    rows: Counter = Counter()
    for step in sampler.evaluation_steps():
        for r in guider.requests(step):
            if isinstance(r, Eval):
                rows[r.network] += 1
            elif isinstance(r, ClassifierGrad):
                rows["classifier_forward"] += 1
                rows["classifier_backward"] += 1
    return rows


def _best_of(fn, repeats: int = 2) -> float:
    fn()  # warm-up (allocations, oneDNN primitive creation)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


@torch.no_grad()
def calibrate(networks: dict, shape, batch: int, runtime, num_classes: int | None, device) -> dict[str, float]:
    """Seconds per row of each network's pass, measured on a batch of `batch` random rows."""
    x = torch.randn(batch, *shape, device=device)
    t = torch.full((batch,), 500, dtype=torch.long, device=device)
    y = None if num_classes is None else torch.randint(0, num_classes, (batch,), device=device)
    rate = {}
    for name, net in networks.items():
        if name == "classifier":
            def grad():
                with torch.enable_grad():
                    x_in = x.detach().requires_grad_(True)
                    with runtime.autocast(x.device):
                        logits = net(x_in, t)
                    lp = F.log_softmax(logits.float(), -1)[torch.arange(batch), y if y is not None else 0]
                    torch.autograd.grad(lp.sum(), x_in)
            rate["classifier"] = _best_of(grad) / batch  # forward + backward, counted once per guided row
        else:
            def forward():
                with runtime.autocast(x.device):
                    net(x, t, y)
            rate[name] = _best_of(forward) / batch
    return rate


def sweep_seconds(point_rows: list[tuple[int, Counter]], rate: dict[str, float]) -> float:
    """Σ over points of samples × rows × seconds per row (the classifier's forward and backward timed together)."""
    total = 0.0
    for samples, rows in point_rows:
        per_sample = sum(n * rate.get(net, 0.0) for net, n in rows.items() if not net.startswith("classifier"))
        per_sample += rows.get("classifier_forward", 0) * rate.get("classifier", 0.0)
        total += samples * per_sample
    return total
