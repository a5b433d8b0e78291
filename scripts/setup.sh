#!/usr/bin/env bash
# Set up tagood on a fresh Debian machine: data packages, a virtualenv, the CPU torch build, the package.
# Idempotent: re-running only checks what is there. Usage: ./scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages holding the offline data: Fashion-MNIST (IDX files), WordNet (NegLabel's label pool) and the
# Tux Paint photo stamps (objects of the `scenes` benchmark; GPL-2 data read from /usr/share/tuxpaint/stamps);
# and Chromium, the headless browser tests/test_html.py opens results.html in.
if [ ! -d /usr/share/datasets/fashion-mnist ] || [ ! -f /usr/share/wordnet/index.noun ] || [ ! -d /usr/share/tuxpaint/stamps ] \
   || ! command -v chromium >/dev/null; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  PKGS="dataset-fashion-mnist wordnet-base tuxpaint-stamps-default chromium"
  $SUDO apt-get install -y -q $PKGS >/dev/null \
    || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q $PKGS >/dev/null; }
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# torch first and pinned: on this kind of machine 2.13.0 is a local CPU wheel; an unpinned torch would pull a 5.5 GB CUDA build.
# GPU users: install the torch build for your CUDA first (`pip install torch`), then `pip install -e .`.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/pip install -q "torch==${TAGOOD_TORCH_VERSION:-2.13.0}"
fi
.venv/bin/pip install -q -e ".[test]"
.venv/bin/python -c "import tagood, torch, onnxruntime; print('tagood', tagood.__version__, '| torch', torch.__version__)"
