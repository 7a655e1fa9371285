"""Write tests/data/edm2_tiny_reference.pt and edm2_tiny_network.pkl with NVlabs/edm2's own code (4bf8162).

Usage: python make_edm2_reference.py <folder holding an edm2 checkout (training/, torch_utils/, dnnlib/)>
(e.g. `git -C <edm2 git dir> archive HEAD | tar -x -C /tmp/edm2src`; edm2's dnnlib imports `requests`).

Two tiny random-weight networks of edm2's `training.networks_edm2.Precond` (every weight and gain drawn from
N(0, 1) and rounded to fp16, so no branch is zero as at edm2's init): a class-conditional latent-shaped one (4 channels, 4 classes)
and an unconditional, narrower one (the shape of EDM2's guiding networks). Saved: their configs, state dicts (fp16, exact),
inputs at σ from 0.002 to 80, their outputs D(x; σ), and a short chain of edm2's generate_images.edm_sampler with
guidance (net guided by the unconditional gnet). The .pkl is the conditional network exactly as edm2's training
loop pickles a snapshot: EasyDict(ema=<Precond in fp16>, encoder=StabilityVAEEncoder(), loss_fn, dataset_kwargs),
persistent classes with their module source embedded.
"""
import os
import pickle
import sys

sys.path.insert(0, sys.argv[1])
import warnings; warnings.filterwarnings("ignore")
import types; sys.modules.setdefault("psutil", types.ModuleType("psutil"))  # training_loop's memory stats only
import torch
import dnnlib
from training.networks_edm2 import Precond
from training.encoders import StabilityVAEEncoder
from training.training_loop import EDM2Loss
from generate_images import edm_sampler

HERE = os.path.dirname(os.path.abspath(__file__))
COND = dict(img_resolution=16, img_channels=4, label_dim=4, model_channels=16, channel_mult=[1, 2], num_blocks=1,
            attn_resolutions=[8], channels_per_head=8, logvar_channels=8)
UNCOND = dict(img_resolution=16, img_channels=4, label_dim=0, model_channels=8, channel_mult=[1, 2], num_blocks=1,
              attn_resolutions=[8], channels_per_head=8, logvar_channels=8)


def random_precond(cfg, seed):
    torch.manual_seed(seed)
    net = Precond(**cfg).eval().requires_grad_(False)
    for p in net.parameters():
        p.copy_(torch.randn_like(p).half().float())  # fp16-exact: the file stores fp16, the pickle is fp16
    for b in net.buffers():  # the Fourier frequencies and phases, as in edm2's fp16 release pickles
        b.copy_(b.half().float())
    return net


def half(state):
    return {k: v.half() for k, v in state.items()}


torch.manual_seed(1)
cond, uncond = random_precond(COND, 0), random_precond(UNCOND, 1)
n = 6
sigma = torch.tensor([0.002, 0.03, 0.5, 1.0, 7.0, 80.0])
x = torch.randn(n, 4, 16, 16) * (1 + sigma.reshape(-1, 1, 1, 1))
labels = torch.tensor([0, 1, 2, 3, 1, 2])
onehot = torch.eye(4)[labels]
with torch.no_grad():
    d_cond, d_uncond = cond(x, sigma, onehot), uncond(x, sigma)
    noise = torch.randn(3, 4, 16, 16)
    chain_labels = torch.tensor([3, 0, 2])
    chain = edm_sampler(cond, noise, torch.eye(4)[chain_labels], gnet=uncond, num_steps=4, guidance=1.7)
torch.save({"cond_config": COND, "uncond_config": UNCOND, "cond_state": half(cond.state_dict()),
            "uncond_state": half(uncond.state_dict()), "x": x, "sigma": sigma, "labels": labels, "d_cond": d_cond,
            "d_uncond": d_uncond, "chain": {"noise": noise, "labels": chain_labels, "num_steps": 4, "guidance": 1.7,
                                            "sigma_min": 0.002, "sigma_max": 80.0, "rho": 7.0, "out": chain}},
           os.path.join(HERE, "edm2_tiny_reference.pt"))

snapshot = dnnlib.EasyDict(encoder=StabilityVAEEncoder(), dataset_kwargs=dnnlib.EasyDict(
    class_name="training.dataset.ImageFolderDataset", path="tiny", use_labels=True), loss_fn=EDM2Loss())
snapshot.ema = cond.to(torch.float16)
with open(os.path.join(HERE, "edm2_tiny_network.pkl"), "wb") as f:
    pickle.dump(snapshot, f)
print({k: os.path.getsize(os.path.join(HERE, k)) for k in ("edm2_tiny_reference.pt", "edm2_tiny_network.pkl")})
