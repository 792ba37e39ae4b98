# Trains a tiny model with ddpm-train, samples it with ddpm-sample, then has
# the Python package load the checkpoint with Trainer.load and sample the
# same images from the same seed.
#
# Variables: BIN_DIR, WORK_DIR, PYTHON, SCRIPT.

include(${CMAKE_CURRENT_LIST_DIR}/common.cmake)

file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}/images")
# Twelve 8 x 8 grayscale training images from the Python package's deps.
run("${PYTHON}" -c "
import sys
from PIL import Image
for i in range(12):
    Image.new('L', (8, 8), 20 * i).save(f'{sys.argv[1]}/{i}.png')
" "${WORK_DIR}/images")

set(model_flags --image-size 8 --channels 1 --dim 8 --dim-mults 1 2
    --attn-dim-head 8 --timesteps 20 --sampling-timesteps 4)
run("${BIN_DIR}/ddpm-train" --folder "${WORK_DIR}/images"
    --results-folder "${WORK_DIR}/results" ${model_flags}
    --train-batch-size 4 --train-num-steps 12 --save-and-sample-every 12
    --ema-update-every 1 --num-samples 4 --seed 1)
run("${BIN_DIR}/ddpm-sample" --checkpoint "${WORK_DIR}/results/model-1.pt"
    --num-samples 4 --seed 9 --output-dir "${WORK_DIR}/samples"
    --save-safetensors "${WORK_DIR}/ema.safetensors")
run("${PYTHON}" "${SCRIPT}" "${WORK_DIR}/results" 1 "${WORK_DIR}/samples" 9
    "${WORK_DIR}/ema.safetensors" "${WORK_DIR}/python.safetensors")

# Weights that Python's safetensors wrote sample the same images in C++.
run("${BIN_DIR}/ddpm-sample" --checkpoint "${WORK_DIR}/python.safetensors"
    --config "${WORK_DIR}/results/config.toml"
    --num-samples 4 --seed 9 --output-dir "${WORK_DIR}/samples-python")
foreach(i 000000 000001 000002 000003)
  file(SHA256 "${WORK_DIR}/samples/${i}.png" first)
  file(SHA256 "${WORK_DIR}/samples-python/${i}.png" second)
  if(NOT first STREQUAL second)
    message(FATAL_ERROR "${i}.png differs after the safetensors round trip")
  endif()
endforeach()
