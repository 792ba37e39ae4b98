# Kills ddpm-train with SIGKILL at several moments, resumes it each time
# from its newest checkpoint, and checks that the final weights equal those
# of an uninterrupted run bit for bit.
#
# Variables: BIN_DIR, WORK_DIR.

include(${CMAKE_CURRENT_LIST_DIR}/common.cmake)

file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}/images")
write_idx_images("${WORK_DIR}/images.idx" 16 37)
run("${BIN_DIR}/ddpm-export-idx" --input "${WORK_DIR}/images.idx"
    --output "${WORK_DIR}/images")

set(steps 1000)
set(train_flags --folder "${WORK_DIR}/images" --image-size 8 --channels 1
    --dim 8 --dim-mults 1 2 --timesteps 20 --sampling-timesteps 2
    --train-batch-size 4 --save-and-sample-every 1 --num-samples 1
    --keep-last-checkpoints 2 --train-num-steps ${steps} --seed 4
    --num-workers 1 --threads 1)

# The uninterrupted run.
run("${BIN_DIR}/ddpm-train" ${train_flags}
    --results-folder "${WORK_DIR}/straight")
run("${BIN_DIR}/ddpm-sample" --checkpoint "${WORK_DIR}/straight/model-${steps}.pt"
    --weights model --num-samples 1 --output "${WORK_DIR}/straight.png"
    --save-safetensors "${WORK_DIR}/straight.safetensors")

# The same run, killed three times and resumed.
set(resume "")
foreach(seconds 2 3 4)
  execute_process(COMMAND timeout --signal=KILL ${seconds}
                          "${BIN_DIR}/ddpm-train" ${train_flags} ${resume}
                          --results-folder "${WORK_DIR}/killed"
                  RESULT_VARIABLE result OUTPUT_QUIET ERROR_QUIET)
  if(NOT (result EQUAL 137 OR result STREQUAL "Subprocess killed"))
    message(FATAL_ERROR "ddpm-train was not killed after ${seconds} s "
                        "(exit ${result}); raise the step count")
  endif()
  file(GLOB checkpoints "${WORK_DIR}/killed/model-*.pt")
  if(checkpoints)
    set(resume --resume latest)
  endif()
endforeach()
run("${BIN_DIR}/ddpm-train" ${train_flags} ${resume}
    --results-folder "${WORK_DIR}/killed")
run("${BIN_DIR}/ddpm-sample" --checkpoint "${WORK_DIR}/killed/model-${steps}.pt"
    --weights model --num-samples 1 --output "${WORK_DIR}/killed.png"
    --save-safetensors "${WORK_DIR}/killed.safetensors")

file(SHA256 "${WORK_DIR}/straight.safetensors" straight)
file(SHA256 "${WORK_DIR}/killed.safetensors" killed)
if(NOT straight STREQUAL killed)
  message(FATAL_ERROR "weights after the killed and resumed run differ "
                      "from the uninterrupted run")
endif()
message(STATUS "killed and resumed run ends with identical weights")
