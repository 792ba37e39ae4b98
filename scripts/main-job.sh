#!/usr/bin/env bash
# The main job: installs what is missing, builds, exports Fashion-MNIST to
# PNG files once, trains a small model on them and samples a grid.
#
#   scripts/main-job.sh [extra ddpm-train flags]
#
# Results go to results/fashion-mnist/ (checkpoints, sample grids during
# training) and results/fashion-mnist/final-grid.png.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD_DIR=${DDPM_BUILD_DIR:-$ROOT/build}
DATA_DIR=$ROOT/data/fashion-mnist
RESULTS_DIR=$ROOT/results/fashion-mnist
IDX_FILE=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
STEPS=1600

"$ROOT/scripts/setup.sh" dataset-fashion-mnist
"$BUILD_DIR/examples/ddpm-export-idx" --input "$IDX_FILE" --output "$DATA_DIR"

start=$(date +%s)
"$BUILD_DIR/examples/ddpm-train" \
  --folder "$DATA_DIR" --results-folder "$RESULTS_DIR" \
  --image-size 28 --channels 1 --dim 32 --dim-mults 1 2 4 \
  --train-batch-size 32 --train-lr 1e-3 --train-num-steps "$STEPS" \
  --ema-update-every 1 --save-and-sample-every 800 --num-samples 36 \
  --sampling-timesteps 100 --amp --seed 0 --overwrite "$@"

latest=$(ls "$RESULTS_DIR"/model-*.pt | sort -V | tail -n 1)
"$BUILD_DIR/examples/ddpm-sample" --checkpoint "$latest" \
  --num-samples 64 --batch-size 64 --seed 1 \
  --output "$RESULTS_DIR/final-grid.png"
echo "main job: training and sampling took $(( $(date +%s) - start )) s"
