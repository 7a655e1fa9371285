"""Gaussian diffusion: forward process q, the reverse-process parameterisation p, and the training losses.

Notation follows DDPM (Ho et al. 2020) / ADM: index t = 0..T-1 holds step t+1 of the paper, so betas[0] = β_1
and alphas_cumprod[t] = ᾱ_{t+1}. Schedule buffers are float64 numpy (precision matters for ᾱ near 0 and 1);
`extract` hands them to torch as float32 on the device of `t`.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch

from guidance.diffusion.losses import discretized_gaussian_log_likelihood, mean_flat, normal_kl
from guidance.errors import GuidanceError

MODEL_VAR_TYPES = ("fixed_small", "fixed_large", "learned_range")
LOSS_TYPES = ("mse", "hybrid")


class GaussianDiffusion:
    def __init__(self, betas, model_var_type: str = "fixed_small", loss_type: str = "mse",
                 timestep_map: Sequence[int] | torch.Tensor | None = None):
        if model_var_type not in MODEL_VAR_TYPES:
            raise GuidanceError(f"unknown model_var_type {model_var_type!r}; use one of {', '.join(MODEL_VAR_TYPES)}")
        if loss_type not in LOSS_TYPES:
            raise GuidanceError(f"unknown loss_type {loss_type!r}; use one of {', '.join(LOSS_TYPES)}")
        if loss_type == "hybrid" and model_var_type != "learned_range":
            raise GuidanceError("loss_type=hybrid trains the variance, so it needs model_var_type=learned_range "
                                "(and a model with learn_sigma=true); or use loss_type=mse")
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or len(betas) < 1 or not np.all((betas > 0) & (betas < 1)):
            raise GuidanceError("betas must be a non-empty 1-D array with every value in (0, 1); "
                                "build them with get_named_beta_schedule")
        self.model_var_type = model_var_type
        self.loss_type = loss_type
        self.betas = betas
        self.num_timesteps = T = len(betas)
        if timestep_map is None:
            timestep_map = range(T)
        self.timestep_map = torch.as_tensor(list(timestep_map) if not torch.is_tensor(timestep_map) else timestep_map,
                                            dtype=torch.long)
        if self.timestep_map.shape != (T,):
            raise GuidanceError(f"timestep_map has {self.timestep_map.numel()} entries but the schedule has {T} steps; "
                                "pass one original timestep per kept step")

        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])  # ᾱ_0 = 1: x_0 itself
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.log_one_minus_alphas_cumprod = np.log(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1.0)

        # Posterior q(x_{t-1} | x_t, x_0) (DDPM eqs. 6-7): β̃_t = (1 − ᾱ_{t−1})/(1 − ᾱ_t) β_t.
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # β̃ is 0 at the first step; its log is clipped to β̃ of the second step (as ADM) so it stays finite.
        pv1 = self.posterior_variance[1] if T > 1 else betas[0]
        self.posterior_log_variance_clipped = np.log(np.append(pv1, self.posterior_variance[1:]))
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)
        self.log_betas = np.log(betas)

        # Fixed reverse variances (DDPM sec. 3.2). fixed_small: σ² = β̃_t, exactly 0 at t = 0 (as ADM, so classifier
        # guidance's mean shift sΣ∇log p vanishes on the last step) with the log clipped to stay finite.
        # fixed_large: σ² = β_t, with β̃ of step 2 at t = 0 (ADM: a better decoder likelihood than β_1).
        if model_var_type == "fixed_large":
            self.model_variance = np.append(self.posterior_variance[1] if T > 1 else betas[0], betas[1:])
            self.model_log_variance = np.log(self.model_variance)
        else:
            self.model_variance = self.posterior_variance
            self.model_log_variance = self.posterior_log_variance_clipped

    def __repr__(self) -> str:
        return (f"GaussianDiffusion(num_timesteps={self.num_timesteps}, model_var_type={self.model_var_type!r}, "
                f"loss_type={self.loss_type!r}, respaced={not torch.equal(self.timestep_map, torch.arange(self.num_timesteps))})")

    # ---- helpers -------------------------------------------------------------------------------------------

    @staticmethod
    def extract(arr: np.ndarray, t: torch.Tensor, broadcast_shape) -> torch.Tensor:
        """arr[t] as float32 on t's device, shaped [B, 1, 1, ...] and broadcast to `broadcast_shape`."""
        out = torch.from_numpy(np.asarray(arr)).to(device=t.device, dtype=torch.float32)[t]
        out = out.reshape(out.shape + (1,) * (len(broadcast_shape) - out.ndim))
        return out.expand(broadcast_shape)

    def _check_output(self, model_output: torch.Tensor, x_t: torch.Tensor) -> None:
        c = x_t.shape[1]
        want = 2 * c if self.model_var_type == "learned_range" else c
        if model_output.shape[0] != x_t.shape[0] or model_output.shape[2:] != x_t.shape[2:] or model_output.shape[1] != want:
            if self.model_var_type == "learned_range":
                hint = "model_var_type=learned_range needs a model with learn_sigma=true (2C output channels)"
            else:
                hint = (f"model_var_type={self.model_var_type} needs a model with learn_sigma=false (C output channels); "
                        "a learn_sigma model goes with diffusion model_var_type=learned_range")
            raise GuidanceError(f"model output shape {tuple(model_output.shape)} does not fit x_t {tuple(x_t.shape)}: {hint}")

    # ---- forward process q ---------------------------------------------------------------------------------

    def q_mean_variance(self, x0: torch.Tensor, t: torch.Tensor):
        """Mean, variance and log-variance of q(x_t | x_0) = N(sqrt(ᾱ_t) x_0, (1 − ᾱ_t) I) (DDPM eq. 4)."""
        mean = self.extract(self.sqrt_alphas_cumprod, t, x0.shape) * x0
        variance = self.extract(1.0 - self.alphas_cumprod, t, x0.shape)
        log_variance = self.extract(self.log_one_minus_alphas_cumprod, t, x0.shape)
        return mean, variance, log_variance

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Draw x_t ~ q(x_t | x_0) by reparameterisation: sqrt(ᾱ_t) x_0 + sqrt(1 − ᾱ_t) ε (DDPM eq. 4)."""
        if noise is None:
            noise = torch.randn_like(x0)
        if noise.shape != x0.shape:
            raise GuidanceError(f"noise shape {tuple(noise.shape)} must equal x0 shape {tuple(x0.shape)}")
        return (self.extract(self.sqrt_alphas_cumprod, t, x0.shape) * x0
                + self.extract(self.sqrt_one_minus_alphas_cumprod, t, x0.shape) * noise)

    def q_posterior_mean_variance(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """Mean, variance β̃_t and clipped log-variance of q(x_{t−1} | x_t, x_0) (DDPM eqs. 6-7)."""
        mean = (self.extract(self.posterior_mean_coef1, t, x_t.shape) * x0
                + self.extract(self.posterior_mean_coef2, t, x_t.shape) * x_t)
        variance = self.extract(self.posterior_variance, t, x_t.shape)
        log_variance = self.extract(self.posterior_log_variance_clipped, t, x_t.shape)
        return mean, variance, log_variance

    def predict_x0_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x̂_0 = (x_t − sqrt(1 − ᾱ_t) ε) / sqrt(ᾱ_t), written as sqrt(1/ᾱ_t) x_t − sqrt(1/ᾱ_t − 1) ε."""
        return (self.extract(self.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t
                - self.extract(self.sqrt_recipm1_alphas_cumprod, t, x_t.shape) * eps)

    def predict_eps_from_x0(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """ε = (sqrt(1/ᾱ_t) x_t − x_0) / sqrt(1/ᾱ_t − 1): the inverse of predict_x0_from_eps."""
        return ((self.extract(self.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t - x0)
                / self.extract(self.sqrt_recipm1_alphas_cumprod, t, x_t.shape))

    # ---- reverse process p ---------------------------------------------------------------------------------

    def p_variance(self, t: torch.Tensor, shape, v: torch.Tensor | None = None):
        """Variance and log-variance of p(x_{t−1} | x_t): the fixed one, or with learned_range the interpolation
        log σ² = frac log β_t + (1 − frac) log β̃_t, frac = (v + 1)/2 (Improved DDPM eq. 15)."""
        if self.model_var_type != "learned_range":
            if v is not None:
                raise GuidanceError(f"the model predicts a variance (learn_sigma=true) but model_var_type="
                                    f"{self.model_var_type}; sample it with diffusion model_var_type=learned_range")
            return self.extract(self.model_variance, t, shape), self.extract(self.model_log_variance, t, shape)
        if v is None:
            raise GuidanceError("model_var_type=learned_range needs the model's variance output (learn_sigma=true)")
        frac = (v + 1.0) / 2.0
        min_log = self.extract(self.posterior_log_variance_clipped, t, shape)
        max_log = self.extract(self.log_betas, t, shape)
        log_variance = frac * max_log + (1.0 - frac) * min_log
        return torch.exp(log_variance), log_variance

    def p_mean_variance(self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                        clip_denoised: bool = True, denoised_fn: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict:
        """p(x_{t−1} | x_t) from the raw network output (ε, or [ε, v] with learned_range).

        The mean is the posterior mean at x̂_0 (DDPM eq. 11 in x_0 form), so clipping x̂_0 to [-1, 1] feeds
        into the mean; the returned `eps` is the network's ε as given, not re-derived from the clipped x̂_0.
        """
        self._check_output(model_output, x_t)
        c = x_t.shape[1]
        eps, v = model_output[:, :c], (model_output[:, c:] if self.model_var_type == "learned_range" else None)
        variance, log_variance = self.p_variance(t, x_t.shape, v)

        pred_x0 = self.predict_x0_from_eps(x_t, t, eps)
        if denoised_fn is not None:
            pred_x0 = denoised_fn(pred_x0)
        if clip_denoised:
            pred_x0 = pred_x0.clamp(-1.0, 1.0)
        mean, _, _ = self.q_posterior_mean_variance(pred_x0, x_t, t)
        return {"mean": mean, "variance": variance, "log_variance": log_variance, "pred_x0": pred_x0, "eps": eps}

    # ---- training ------------------------------------------------------------------------------------------

    def vb_terms_bpd(self, model_output: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """One term of the variational bound per example, in bits per dimension (DDPM eq. 5).

        L_{t−1} = KL(q(x_{t−1} | x_t, x_0) || p(x_{t−1} | x_t)) for t > 0, and the decoder NLL L_0 at t = 0.
        """
        true_mean, _, true_log_var = self.q_posterior_mean_variance(x0, x_t, t)
        out = self.p_mean_variance(model_output, x_t, t, clip_denoised=False)
        kl = mean_flat(normal_kl(true_mean, true_log_var, out["mean"], out["log_variance"])) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x0, out["mean"], 0.5 * out["log_variance"])
        nll = mean_flat(nll) / math.log(2.0)
        return torch.where(t == 0, nll, kl)

    def training_losses(self, model: Callable, x0: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None,
                        noise: torch.Tensor | None = None) -> dict:
        """Per-example losses: `mse` (L_simple, DDPM eq. 14), `vb` (hybrid only) and their sum `loss`.

        The network sees the original timestep timestep_map[t], so a respaced diffusion trains/evaluates the
        same network as the full one.
        """
        if self.model_var_type == "learned_range" and self.loss_type != "hybrid":
            raise GuidanceError("model_var_type=learned_range with loss_type=mse would leave the variance output "
                                "untrained; use loss_type=hybrid")
        if noise is None:
            noise = torch.randn_like(x0)
        x_t = self.q_sample(x0, t, noise)
        model_output = model(x_t, self.timestep_map.to(t.device)[t], y)
        self._check_output(model_output, x_t)
        eps = model_output[:, : x0.shape[1]]
        terms = {"mse": mean_flat((noise - eps) ** 2)}
        if self.loss_type == "hybrid":
            # Improved DDPM sec. 3.1: L_hybrid = L_simple + λ L_vlb with λ = 0.001 and a stop-gradient on the
            # mean, so L_vlb only trains the variance. λ·T (= num_timesteps/1000) turns the sampled single
            # term into λ times an estimate of the whole bound.
            frozen = torch.cat([eps.detach(), model_output[:, x0.shape[1]:]], dim=1)
            terms["vb"] = self.vb_terms_bpd(frozen, x0, x_t, t) * (self.num_timesteps / 1000.0)
            terms["loss"] = terms["mse"] + terms["vb"]
        else:
            terms["loss"] = terms["mse"]
        return terms
