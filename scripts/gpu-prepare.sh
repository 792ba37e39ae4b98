#!/usr/bin/env bash
# Gathers what a GPU machine without package registries needs to run
# scripts/gpu-check.sh. It runs on a machine with Debian's packages and PyPI
# and copies the headers and CMake files of CLI11, stb, nlohmann-json,
# GoogleTest and zlib, and wheels of the Python package and its small
# dependencies, to .device-deps/ (git-ignored), which travels with the
# working tree.
#
#   scripts/gpu-prepare.sh
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=$ROOT/.device-deps
rm -rf "$OUT"
mkdir -p "$OUT/usr/include" "$OUT/usr/lib" "$OUT/wheels"

copy() { # copy PATH...: keeps the path below / under $OUT
  local path
  for path in "$@"; do
    mkdir -p "$OUT$(dirname "$path")"
    cp -a "$path" "$OUT$path"
  done
}

copy /usr/include/CLI /usr/share/cmake/CLI11 \
     /usr/include/stb \
     /usr/include/nlohmann /usr/share/cmake/nlohmann_json \
     /usr/include/gtest /usr/lib/x86_64-linux-gnu/cmake/GTest \
     /usr/lib/x86_64-linux-gnu/libgtest.a \
     /usr/lib/x86_64-linux-gnu/libgtest_main.a \
     /usr/include/zlib.h /usr/include/zconf.h \
     /usr/lib/x86_64-linux-gnu/libz.a

# The Python package without torch (the GPU machine brings its own).
"$ROOT/.venv/bin/python" -m pip download -q --no-deps -d "$OUT/wheels" \
  denoising-diffusion-pytorch==2.3.4 ema-pytorch einops accelerate \
  pytorch-fid
du -sh "$OUT"
