"""Write tests/data/dinov2_tiny_reference.pt from Meta's own DINOv2 code (facebookresearch/dinov2, b8931f7)."""
import os, sys
from functools import partial
os.environ["XFORMERS_DISABLED"] = "1"
# Usage: python make_dinov2_tiny_reference.py <folder holding the dinov2 package of facebookresearch/dinov2>
sys.path.insert(0, sys.argv[1])
import warnings; warnings.filterwarnings("ignore")
import torch
from dinov2.models.vision_transformer import DinoVisionTransformer
from dinov2.layers import MemEffAttention, NestedTensorBlock as Block
torch.manual_seed(0)
m = DinoVisionTransformer(img_size=56, patch_size=14, embed_dim=32, depth=2, num_heads=4, mlp_ratio=4,
                          init_values=1.0, block_fn=partial(Block, attn_class=MemEffAttention), block_chunks=0,
                          interpolate_offset=0.1, interpolate_antialias=False).eval()
with torch.no_grad():
    for p in m.parameters():
        p.copy_(torch.randn_like(p) * 0.2)
    x = torch.randn(3, 3, 70, 70)   # 5x5 patches: the 4x4 trained grid is interpolated
    x2 = torch.randn(2, 3, 56, 56)  # the trained grid as is
    out = {"state_dict": m.state_dict(), "config": dict(embed_dim=32, depth=2, num_heads=4, patch_size=14, img_size=56),
           "x": x, "y": m(x), "x_native": x2, "y_native": m(x2)}
torch.save(out, os.path.join(os.path.dirname(os.path.abspath(__file__)), "dinov2_tiny_reference.pt"))
print({k: v.shape for k, v in out.items() if torch.is_tensor(v)})
