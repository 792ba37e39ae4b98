#!/usr/bin/env bash
# Installs what is missing, builds, and runs the whole test suite: first
# the regular build, then the sanitizer build with short fuzz runs
# (scripts/sanitize.sh). DDPM_SKIP_SANITIZE=1 runs the first part only.
#
#   scripts/test.sh
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$ROOT/scripts/setup.sh"
(cd "${DDPM_BUILD_DIR:-$ROOT/build}" && ctest --output-on-failure -j "$(nproc)")
if [ "${DDPM_SKIP_SANITIZE:-0}" != 1 ]; then
  "$ROOT/scripts/sanitize.sh"
fi
