#!/usr/bin/env bash
# Runs on a CUDA machine in one go (about 8 minutes on one H200): builds
# against the LibTorch of the machine's Python torch, runs the CUDA tests,
# and runs the GPU benchmark beside the Python package. Dependencies that
# the machine lacks come from .device-deps/ (scripts/gpu-prepare.sh).
#
#   scripts/gpu-check.sh [output folder]
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${1:-$ROOT/gpu-results}
DEPS=$ROOT/.device-deps
BUILD=$ROOT/build-gpu
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu-check.log") 2>&1

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
prefix=$("$PYTHON" -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')
"$PYTHON" -c 'import torch; print("torch", torch.__version__, "cuda",
  torch.version.cuda, "available", torch.cuda.is_available())'

if ! "$PYTHON" -c 'import denoising_diffusion_pytorch' 2>/dev/null; then
  # Without an index only the carried wheels can install. When the machine
  # lacks other dependencies this fails, and the benchmark runs C++ only.
  "$PYTHON" -m pip install -q --no-index --find-links "$DEPS/wheels" \
    denoising-diffusion-pytorch ||
    echo "gpu-check: the Python package could not be installed"
fi

cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release \
  "-DCMAKE_PREFIX_PATH=$prefix;$DEPS/usr;$DEPS/usr/lib/x86_64-linux-gnu" \
  "-DDDPM_STB_INCLUDE_DIR=$DEPS/usr/include/stb" \
  "-DZLIB_ROOT=$DEPS/usr" "-DZLIB_LIBRARY=$DEPS/usr/lib/x86_64-linux-gnu/libz.a" \
  -DDDPM_INSTALL=OFF -Wno-dev
cmake --build "$BUILD" -j "$(nproc)" --target ddpm_cuda_tests ddpm-bench

(cd "$BUILD" && ctest -L cuda --output-on-failure) | tee "$OUT/cuda-tests.txt"

if "$PYTHON" -c 'import denoising_diffusion_pytorch' 2>/dev/null; then
  "$PYTHON" "$ROOT/benchmarks/compare_gpu.py" \
    --bench "$BUILD/benchmarks/ddpm-bench" | tee "$OUT/benchmark.md"
else
  for batch in 16 64; do
    for graphs in "" --cuda-graphs; do
      "$BUILD/benchmarks/ddpm-bench" --config G --task sample \
        --device cuda:0 --sample-batch $batch $graphs
    done
  done | tee "$OUT/benchmark.jsonl"
fi
