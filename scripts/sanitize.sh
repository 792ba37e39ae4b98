#!/usr/bin/env bash
# Builds the whole project with clang under AddressSanitizer and
# UndefinedBehaviorSanitizer, with the libFuzzer targets, and runs every
# test there, including a short run of each fuzz target.
#
#   scripts/sanitize.sh              build-sanitize/, then ctest
#   DDPM_FUZZ_SECONDS=1800 DDPM_FUZZ_SEED=0 scripts/sanitize.sh -L fuzz
#                                    long fuzz runs only, each from a new
#                                    seed (the default seed, 1, repeats
#                                    the same inputs in every run)
#
# Arguments go to ctest. LibTorch itself is not instrumented; its one known
# leak is suppressed by tests/lsan.supp.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD_DIR=${DDPM_SANITIZE_BUILD_DIR:-$ROOT/build-sanitize}

# The regular set-up first: Debian packages (plus clang and its sanitizer
# runtimes), the .venv with torch.
"$ROOT/scripts/setup.sh" clang libclang-rt-14-dev

if [ -n "${Torch_DIR:-}" ]; then
  prefix=$Torch_DIR
elif [ -n "${CMAKE_PREFIX_PATH:-}" ]; then
  prefix=$CMAKE_PREFIX_PATH
else
  prefix=$("$ROOT/.venv/bin/python" -c \
    'import torch.utils; print(torch.utils.cmake_prefix_path)')
fi
cmake -S "$ROOT" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
  -DDDPM_SANITIZE=ON -DDDPM_FUZZ=ON \
  "-DDDPM_FUZZ_SECONDS=${DDPM_FUZZ_SECONDS:-20}" \
  "-DDDPM_FUZZ_SEED=${DDPM_FUZZ_SEED:-1}" \
  "-DCMAKE_PREFIX_PATH=$prefix" -Wno-dev
cmake --build "$BUILD_DIR" -j "$(nproc)"

export LSAN_OPTIONS="suppressions=$ROOT/tests/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="print_stacktrace=1"
cd "$BUILD_DIR"
ctest --output-on-failure -j "$(nproc)" "$@"
