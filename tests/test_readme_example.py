"""The README's Python examples run as written: the ```python block under "From Python, without Hydra", and
under "Bring your own model" its mymodel.py, the block sampling it and the guidance-sample command line."""

import contextlib
import io
import os
import re
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### From Python, without Hydra"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_python_example_draws_16_guided_images():
    code = readme_example()
    assert "pretrained/fashion_mnist/cpu/unet.pt" in code and "build_guider" in code
    scope, out = {}, io.StringIO()
    cwd = os.getcwd()
    try:
        os.chdir(ROOT)
        with contextlib.redirect_stdout(out):
            exec(compile(code, "README.md", "exec"), scope)
    finally:
        os.chdir(cwd)
    images, labels = scope["images"], scope["labels"]
    assert tuple(images.shape) == (16, 1, 28, 28) and images.abs().max() <= 1
    assert labels.tolist() == [i % 10 for i in range(16)]
    # CFG evaluates the conditional and the null-label prediction at each of the 10 steps: 20 passes per image
    assert scope["denoiser"].cost_per_sample()["nfe"] == 20
    assert "torch.Size([16, 1, 28, 28])" in out.getvalue()


# ---- "Bring your own model": mymodel.py, the Python block and the command line, as written ----

def byom_blocks() -> tuple[str, str, str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Bring your own model"):]
    section = section[:section.index("\n### ")]
    module, usage = re.findall(r"```python\n(.*?)```", section, re.S)[:2]
    command = re.search(r"```bash\n(.*?)```", section, re.S).group(1).replace("\\\n", " ")
    return module, usage, command


def run_byom_usage(folder: Path, module: str, usage: str) -> tuple[dict, str]:
    """The usage block's scope and output, with the README's mymodel.py importable from `folder`."""
    import sys

    (folder / "mymodel.py").write_text(module)
    scope, out = {}, io.StringIO()
    sys.path.insert(0, str(folder))
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(usage, "README.md", "exec"), scope)
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop("mymodel", None)
    return scope, out.getvalue()


def test_the_readme_byom_example_samples_a_flow_model_with_cfg(tmp_path):
    """The README's own flow model is exact (one image per class), so CFG's flow Euler chain must land on
    (1 + w) x_0(y) − w x_0(∅) to float rounding: a wrong parameterization, grid or null label would not."""
    module, usage, _ = byom_blocks()
    assert 'parameterization="flow"' in module and "FlowEulerSampler" in usage and 'build_guider("cfg"' in usage
    scope, out = run_byom_usage(tmp_path, module, usage)
    images, labels, prototypes = scope["images"], scope["labels"], scope["model"].network.images.detach()
    target = 2 * prototypes[labels] - prototypes.mean(0)  # w = 1
    assert tuple(images.shape) == (16, 1, 28, 28) and labels.tolist() == [i % 10 for i in range(16)]
    torch.testing.assert_close(images, target, rtol=0, atol=1e-5)
    assert scope["denoiser"].cost_per_sample()["nfe"] == 20  # CFG: 2 passes x 10 steps
    assert "torch.Size([16, 1, 28, 28])" in out


def test_the_readme_byom_command_line_samples_what_the_python_example_does(tmp_path):
    """guidance-sample with the README's `_target_` model (a subprocess, as a user runs it): the same 16 images as
    the Python block (same seeds, sampler and guidance), the adapter and the content hash in sample_info."""
    import json
    import shlex
    import subprocess
    import sys

    import numpy as np

    from guidance.data import to_uint8

    module, usage, command = byom_blocks()
    (tmp_path / "mymodel.py").write_text(module)
    words = shlex.split(command)
    assert words[:2] == ["PYTHONPATH=.", "guidance-sample"]
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}", "WANDB_MODE": "disabled",
           "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "guidance.apps.sample", *words[2:], f"hydra.run.dir={tmp_path}/run",
                        "device=cpu"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    info = json.loads((tmp_path / "run/sample_info.json").read_text())
    assert info["model"]["parameterization"] == "flow" and info["model"]["levels"]["kind"] == "continuous"
    assert info["unet_model"] == {"_target_": "mymodel.build"} and info["unet_ckpt"] is None
    assert len(info["unet_sha256"]) == 64 and info["cost_per_sample"]["nfe"] == 20 and info["num_classes"] == 10
    scope, _ = run_byom_usage(tmp_path, module, usage)
    with np.load(tmp_path / "run/samples.npz") as z:
        assert np.array_equal(z["arr_1"], scope["labels"].numpy())
        assert np.array_equal(z["arr_0"], to_uint8(scope["images"]).permute(0, 2, 3, 1).numpy())
