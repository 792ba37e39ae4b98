#!/usr/bin/env bash
# Installs what building ddpm needs and builds it; safe to run again, it
# installs and rebuilds only what is missing or changed.
#
#   scripts/setup.sh            Debian packages, .venv with torch, build/
#
# A LibTorch of your own is used instead of the .venv when CMAKE_PREFIX_PATH
# or Torch_DIR is set in the environment.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD_DIR=${DDPM_BUILD_DIR:-$ROOT/build}
TORCH_VERSION=2.15.0
# The Python package this library mirrors: the interoperability test and
# tests/fixtures/generate.py use it.
PYTHON_PACKAGE=denoising-diffusion-pytorch==2.3.4
DEBIAN_PACKAGES=(cmake g++ make python3-venv libcli11-dev libstb-dev
                 googletest libgtest-dev zlib1g-dev nlohmann-json3-dev)

missing_packages() {
  local package
  for package in "$@"; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null |
        grep -q "install ok installed"; then
      echo "$package"
    fi
  done
}

install_debian_packages() {
  local missing
  missing=$(missing_packages "$@")
  if [ -n "$missing" ]; then
    echo "setup: installing Debian packages:" $missing
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # shellcheck disable=SC2086
    apt-get install -y -q --no-install-recommends $missing
  fi
}

torch_prefix() {
  if [ -n "${Torch_DIR:-}" ]; then
    echo "$Torch_DIR"
  elif [ -n "${CMAKE_PREFIX_PATH:-}" ]; then
    echo "$CMAKE_PREFIX_PATH"
  else
    "$ROOT/.venv/bin/python" -c \
      'import torch.utils; print(torch.utils.cmake_prefix_path)'
  fi
}

install_python_packages() {
  if [ -n "${Torch_DIR:-}${CMAKE_PREFIX_PATH:-}" ]; then
    return
  fi
  if ! "$ROOT/.venv/bin/python" -c "import torch" 2>/dev/null; then
    echo "setup: creating $ROOT/.venv with torch $TORCH_VERSION"
    python3 -m venv "$ROOT/.venv"
    "$ROOT/.venv/bin/python" -m pip install -q --upgrade pip
    "$ROOT/.venv/bin/python" -m pip install -q "torch==$TORCH_VERSION"
  fi
  if ! "$ROOT/.venv/bin/python" -c "import denoising_diffusion_pytorch" \
      2>/dev/null; then
    echo "setup: installing $PYTHON_PACKAGE into $ROOT/.venv"
    "$ROOT/.venv/bin/python" -m pip install -q "$PYTHON_PACKAGE" \
      "torch==$TORCH_VERSION"
  fi
}

build() {
  local prefix
  prefix=$(torch_prefix)
  if [ ! -f "$BUILD_DIR/CMakeCache.txt" ]; then
    cmake -S "$ROOT" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release \
      "-DCMAKE_PREFIX_PATH=$prefix" -Wno-dev
  fi
  cmake --build "$BUILD_DIR" -j "$(nproc)"
}

install_debian_packages "${DEBIAN_PACKAGES[@]}" "$@"
install_python_packages
build
