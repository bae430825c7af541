#!/usr/bin/env bash
# The GPU figures of benchmarks/README.md in one run, on a CUDA machine that has PyTorch (and timm, accelerate,
# OpenCV, rich, safetensors, scikit-image) but possibly no package index.
#
#   bash benchmarks/gpu_check.sh --fetch     # where PyPI is reachable: the wheels fastai needs -> .whl/ (2 MB)
#   OUT=gpu_results bash benchmarks/gpu_check.sh   # on the GPU machine: installs .whl/ if fastai is missing, then runs
#
# Environment: OUT (results folder, default gpu_results), DEVICE (default cuda), ITERS (timed iterations per
# configuration, default 30), SIZE (HxW of both domains; default: the paper's 760x1280 + 512x1024),
# TOY_ITERS (default 200), TOY_PRECISIONS (default "fp16 bf16"), DATA_IMAGES (default 24), COMPILE (0 skips the torch.compile run), PYTHON (default
# python3). It writes at most 8 files to OUT, the tables included:
# device.txt, train_step.{txt,json}, train_step_320x640.txt, compile.txt, toy_fp16.json, toy_bf16.json,
# data_pipeline.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
# fastprogress 1.0.3: the last release that does not import python-fasthtml (and its web-server dependencies)
WHEELS=(fastai==2.8.12 fastcore==2.2.41 fasttransform==0.0.5 fastprogress==1.0.3 fastdownload==0.0.8
        plum-dispatch==2.9.0 beartype==0.23.1)
PY=${PYTHON:-python3}
if [[ "${1:-}" == --fetch ]]; then  # for the GPU machine's Python (WHEEL_PYTHON, default 3.12), x86-64 Linux
  exec $PY -m pip download -q --no-deps --only-binary=:all: --python-version "${WHEEL_PYTHON:-3.12}" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "${WHEELS[@]}"
fi

OUT=${OUT:-gpu_results}; DEVICE=${DEVICE:-cuda}; ITERS=${ITERS:-30}; TOY_ITERS=${TOY_ITERS:-200}
DATA_IMAGES=${DATA_IMAGES:-24}
mkdir -p "$OUT"
if ! $PY -c 'import fastai' 2>/dev/null; then
  ls .whl/*.whl >/dev/null 2>&1 || { echo "gpu_check: fastai is not installed and .whl/ holds no wheels: run 'bash benchmarks/gpu_check.sh --fetch' where PyPI is reachable" >&2; exit 2; }
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/dada_site .whl/*.whl
  export PYTHONPATH=/tmp/dada_site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
size=(); [[ -n "${SIZE:-}" ]] && size=(--size "$SIZE")

{ date -u; nvidia-smi 2>/dev/null || true
  $PY -c 'import torch, fastai, timm; print("torch", torch.__version__, "fastai", fastai.__version__, "timm", timm.__version__,
      "|", torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device")'; } | tee "$OUT/device.txt"

# 1. The training step: plain loop (baseline) / faithful / fast (bf16), peak memory of each
$PY benchmarks/train_step.py --device "$DEVICE" --iters "$ITERS" "${size[@]}" --json "$OUT/train_step.json" \
  | tee "$OUT/train_step.txt"
# 1b. At the 320x640 presets' size, where BatchNorm frozen lets fast mode join source and target in one forward
$PY benchmarks/train_step.py --device "$DEVICE" --iters "$ITERS" --size 320x640 \
  --configs plain,faithful,fast,faithful-frozen-bn,fast-frozen-bn | tee "$OUT/train_step_320x640.txt"
# 2. Fast mode with torch.compile (compilation in the untimed warm-up)
if [[ "${COMPILE:-1}" != 0 ]]; then
  $PY benchmarks/train_step.py --device "$DEVICE" --iters "$ITERS" "${size[@]}" --warmup 5 --configs plain,fast --compile \
    | tee "$OUT/compile.txt" || echo "compile run failed (see above)" | tee -a "$OUT/compile.txt"
fi
# 3. The whole app on the device, on the toy pair: fast mode in fp16 (GradScaler over both optimizers), then bf16
for prec in ${TOY_PRECISIONS:-fp16 bf16}; do
  DADA_FASTAI_CACHE=/tmp/dada_cache $PY -m dada_fastai.cli train --device "$DEVICE" --mode fast --precision $prec \
    --iters "$TOY_ITERS" --out /tmp/toy_$prec
  cp /tmp/toy_$prec/results.json "$OUT/toy_$prec.json"
done
# 4. Data loading at the paper's sizes with this machine's cores
$PY benchmarks/data_pipeline.py --n-images "$DATA_IMAGES" --batches "$DATA_IMAGES" --workers 0,8 | tee "$OUT/data_pipeline.txt"
