"""DiT and SiT networks (Peebles & Xie 2023; Ma et al. 2024) on diffusers' `DiTTransformer2DModel`.

diffusers' class is the implementation (an optional dependency: `pip install diffusers`); this module gives it
the engine's call convention `network(x, t, labels) -> output` and, by default, DiT's own arithmetic, which
diffusers' DiT departs from in two places (found by running both on the same weights, tests/test_dit.py):

- the sinusoidal time frequencies: DiT's TimestepEmbedder uses exp(−ln(10⁴) i / 128), i < 128; diffusers'
  CombinedTimestepLabelEmbeddings has downscale_freq_shift=1, i.e. exp(−ln(10⁴) i / 127);
- the LayerNorm before each block's MLP: eps 1e-6 in DiT, diffusers' norm_eps (1e-5 by default).

conventions="dit" (default) sets both to DiT's, so a DiT or SiT release computes what its authors' code computes;
conventions="diffusers" keeps the class as diffusers configures it (what diffusers' DiTPipeline computes).
DiT feeds one time/label embedder to every block; diffusers holds a copy per block: shared_embedding=True ties
the copies (one set of weights, as DiT; torch.save stores it once).

Outputs. DiT (learn_sigma): [ε, v] along channels, v the learned-range variance (Improved DDPM eq. 15), as ADM.
SiT: `velocity="sit"` returns the engine's flow velocity u = ε − x̂0 (guidance.engine.model, parameterization
"flow") from SiT's network, whose velocity is d/dt of x_t = t x_data + (1 − t) ε (SiT's transport/path.py ICPlan:
t = 1 is data), i.e. x_data − ε = −u; the learned-variance half SiT's XL/2 release carries is dropped, as SiT's
own forward does.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from typing import Sequence

import torch
from torch import nn

from guidance.errors import GuidanceError

CONVENTIONS = ("dit", "diffusers")
VELOCITIES = (None, "sit")


def _diffusers_dit():
    try:
        from diffusers import DiTTransformer2DModel
    except ImportError as e:  # pragma: no cover - diffusers is in the dev environment
        raise GuidanceError("DiT and SiT models run on diffusers' DiTTransformer2DModel; pip install diffusers "
                            f"({type(e).__name__}: {e})") from None
    return DiTTransformer2DModel


@functools.lru_cache(maxsize=None)
def _once_embedding_class(base: type) -> type:
    class OnceEmbedding(base):
        """The time + label conditioning computed once per DiTNetwork forward, as DiT does (diffusers calls it from
        every block and the final layer): a hook on `time_embed` then sees one call per forward."""

        memo = None  # a list during a DiTNetwork forward

        def forward(self, timestep, class_labels, hidden_dtype=None):
            if self.memo is None:
                return super().forward(timestep, class_labels, hidden_dtype=hidden_dtype)
            if not self.memo:
                self.memo.append(super().forward(timestep, class_labels, hidden_dtype=hidden_dtype))
            return self.memo[0]

    return OnceEmbedding


class _IdentityAttention:
    """A diffusers attention processor with the identity attention map (PAG's perturbed pass, Ahn et al. 2024):
    each token's output is its own value, projected out."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        return attn.to_out[1](attn.to_out[0](attn.to_v(hidden_states)))


class DiTNetwork(nn.Module):
    """A class-conditional DiT/SiT transformer in DiT's naming (models.py) but for `image_size`, the size of the
    network's input as for every toolkit network (DiT's input_size: the latent's, image pixels / 8),
    `hidden_size` = heads × head dim, `depth` blocks, `num_classes` + 1 label rows (the last: the null label
    that label dropout trained). forward(x [B, in_channels, image_size, image_size], t [B], labels [B] or None
    (= the null label)) -> [B, out, image_size, image_size]."""

    def __init__(self, image_size: int = 32, patch_size: int = 2, in_channels: int = 4, hidden_size: int = 1152,
                 depth: int = 28, num_heads: int = 16, mlp_ratio: float = 4.0, num_classes: int = 1000,
                 learn_sigma: bool = True, conventions: str = "dit", shared_embedding: bool = True,
                 velocity: str | None = None, norm_eps: float = 1e-5):
        super().__init__()
        if conventions not in CONVENTIONS:
            raise GuidanceError(f"conventions={conventions!r} is unknown; use dit (DiT's own arithmetic) or diffusers")
        if velocity not in VELOCITIES:
            raise GuidanceError(f"velocity={velocity!r} is unknown; use null (DiT: ε) or sit")
        if hidden_size % num_heads:
            raise GuidanceError(f"hidden_size={hidden_size} is not a multiple of num_heads={num_heads}")
        if mlp_ratio != 4.0:  # diffusers' FeedForward has mult=4 fixed in BasicTransformerBlock
            raise GuidanceError(f"mlp_ratio={mlp_ratio}: diffusers' DiT block has a 4x MLP; every DiT/SiT model uses 4")
        self.image_size, self.in_channels, self.num_classes = image_size, in_channels, num_classes
        self.learn_sigma, self.conventions, self.velocity = learn_sigma, conventions, velocity
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.transformer = _diffusers_dit()(
            num_attention_heads=num_heads, attention_head_dim=hidden_size // num_heads, in_channels=in_channels,
            out_channels=self.out_channels, num_layers=depth, sample_size=image_size, patch_size=patch_size,
            num_embeds_ada_norm=num_classes, norm_eps=1e-6 if conventions == "dit" else norm_eps)
        blocks = self.transformer.transformer_blocks
        if conventions == "dit":
            for block in blocks:
                block.norm1.emb.time_proj.downscale_freq_shift = 0  # DiT: frequencies exp(−ln(10⁴) i / half)
        self.shared_embedding = bool(shared_embedding)
        if shared_embedding:
            emb = blocks[0].norm1.emb
            emb.__class__ = _once_embedding_class(type(emb))
            for block in blocks[1:]:
                block.norm1.emb = emb

    @property
    def time_embed(self) -> nn.Module:
        """The time embedding after its MLP (TSG perturbs its output with a forward hook); one module, called once
        per forward, only when the embedder is shared (DiT's layout)."""
        if not self.shared_embedding:
            raise AttributeError("time_embed: this DiTNetwork holds one time embedder per block (shared_embedding=False)")
        return self.transformer.transformer_blocks[0].norm1.emb.timestep_embedder

    def attention_blocks(self) -> dict:
        """Self-attention of each transformer block, by block index ("0" … str(depth − 1))."""
        return {str(i): block.attn1 for i, block in enumerate(self.transformer.transformer_blocks)}

    @contextmanager
    def identity_attention(self, names: Sequence[str]):
        """Within the block, the named blocks' self-attention uses the identity map (PAG's perturbed pass)."""
        blocks = self.attention_blocks()
        unknown = [n for n in names if n not in blocks]
        if unknown:
            raise GuidanceError(f"no self-attention block {unknown} in this DiT; it has blocks 0 … {len(blocks) - 1}")
        saved = {n: blocks[n].processor for n in names}
        try:
            for n in names:
                blocks[n].processor = _IdentityAttention()
            yield self
        finally:
            for n, processor in saved.items():
                blocks[n].processor = processor

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if labels is None:
            labels = torch.full((len(x),), self.num_classes, dtype=torch.long, device=x.device)
        emb = self.transformer.transformer_blocks[0].norm1.emb
        if self.shared_embedding:
            emb.memo = []
        try:
            out = self.transformer(x, timestep=t, class_labels=labels).sample
        finally:
            if self.shared_embedding:
                emb.memo = None
        if self.velocity == "sit":
            return -out[:, :self.in_channels]  # u = ε − x̂0 = −(SiT's x_data − ε); SiT drops the variance half
        return out
