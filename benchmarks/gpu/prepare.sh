#!/usr/bin/env bash
# Prepare, HERE (a machine with PyPI), what a lent GPU machine lacks for benchmarks/gpu/session.sh: the wheels its
# image does not hold (hydra-core, omegaconf, antlr4 runtime, torch-fidelity, diffusers; it has torch, numpy,
# scipy, matplotlib, tqdm, PyYAML, huggingface_hub, safetensors) and the Fashion-MNIST files, in .gpu/ (ignored by
# git through .git/info/exclude, carried by the device tool). About 12 MB of wheels + 30 MB of data.
#   bash benchmarks/gpu/prepare.sh
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
grep -qxF '/.gpu/' .git/info/exclude || echo '/.gpu/' >> .git/info/exclude
mkdir -p .gpu/whl .gpu/data/fashion-mnist
py=${PYTHON:-.venv/bin/python}
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any -d .gpu/whl \
  hydra-core==1.3.8 omegaconf==2.3.1 torch-fidelity==0.4.0 diffusers==0.42.1   # the versions the tests ran with
"$py" -m pip wheel -q --no-deps -w .gpu/whl antlr4-python3-runtime==4.9.3   # sdist only on PyPI: pure Python
cp /usr/share/datasets/fashion-mnist/*.gz .gpu/data/fashion-mnist/
du -sh .gpu
