"""The README's Python example (the ```python block under "From Python, without Hydra") runs as written."""

import contextlib
import io
import os
import re
from pathlib import Path

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
