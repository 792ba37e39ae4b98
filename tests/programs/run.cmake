# Runs ddpm-export-idx, ddpm-train and ddpm-sample end to end on a tiny
# data set and checks their output files and error messages.
#
# Variables: BIN_DIR (the programs), WORK_DIR (scratch folder).

include(${CMAKE_CURRENT_LIST_DIR}/common.cmake)

function(run_program expected_result output_variable)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE result
                  OUTPUT_VARIABLE output ERROR_VARIABLE output)
  if(NOT result EQUAL expected_result)
    list(JOIN ARGN " " command)
    message(FATAL_ERROR
      "${command}\nexited with ${result}, expected ${expected_result}:\n"
      "${output}")
  endif()
  set(${output_variable} "${output}" PARENT_SCOPE)
endfunction()

function(expect_match text pattern)
  if(NOT text MATCHES "${pattern}")
    message(FATAL_ERROR "expected output matching \"${pattern}\", got:\n${text}")
  endif()
endfunction()

file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")

write_idx_images("${WORK_DIR}/images.idx" 20 7)

run_program(0 out "${BIN_DIR}/ddpm-export-idx" --input "${WORK_DIR}/images.idx"
            --output "${WORK_DIR}/images")
expect_match("${out}" "wrote 20 images")
run_program(0 out "${BIN_DIR}/ddpm-export-idx" --input "${WORK_DIR}/images.idx"
            --output "${WORK_DIR}/images")
expect_match("${out}" "already contains the first 20")
# An export with a different limit writes again.
run_program(0 out "${BIN_DIR}/ddpm-export-idx" --input "${WORK_DIR}/images.idx"
            --output "${WORK_DIR}/images" --limit 5)
expect_match("${out}" "wrote 5 images")
run_program(0 out "${BIN_DIR}/ddpm-export-idx" --input "${WORK_DIR}/images.idx"
            --output "${WORK_DIR}/images")
expect_match("${out}" "wrote 20 images")

set(model_flags --image-size 8 --channels 1 --dim 8 --dim-mults 1 2
    --timesteps 20 --sampling-timesteps 4)
run_program(0 out "${BIN_DIR}/ddpm-train" --folder "${WORK_DIR}/images"
            --results-folder "${WORK_DIR}/results" ${model_flags}
            --train-batch-size 4 --train-num-steps 4 --save-and-sample-every 2
            --num-samples 4 --seed 3)
expect_match("${out}" "step 4/4")
string(ASCII 27 escape)
string(FIND "${out}" "${escape}" escape_at)
if(NOT escape_at EQUAL -1)
  message(FATAL_ERROR "terminal escape codes in output sent to a pipe")
endif()
foreach(name model-1.pt model-2.pt sample-1.png sample-2.png config.toml)
  if(NOT EXISTS "${WORK_DIR}/results/${name}")
    message(FATAL_ERROR "ddpm-train did not write ${name}")
  endif()
endforeach()

# Resuming continues from the checkpoint's step.
run_program(0 out "${BIN_DIR}/ddpm-train" --config
            "${WORK_DIR}/results/config.toml" --resume 2
            --train-num-steps 6)
expect_match("${out}" "trained to step 6")

# The model flags come from config.toml; the same seed gives the same file.
foreach(run a b)
  run_program(0 out "${BIN_DIR}/ddpm-sample"
              --checkpoint "${WORK_DIR}/results/model-2.pt"
              --num-samples 4 --seed 5 --output "${WORK_DIR}/grid-${run}.png")
endforeach()
file(SHA256 "${WORK_DIR}/grid-a.png" hash_a)
file(SHA256 "${WORK_DIR}/grid-b.png" hash_b)
if(NOT hash_a STREQUAL hash_b)
  message(FATAL_ERROR "ddpm-sample gave different grids for the same seed")
endif()
run_program(0 out "${BIN_DIR}/ddpm-sample"
            --checkpoint "${WORK_DIR}/results/model-2.pt" --num-samples 3
            --output-dir "${WORK_DIR}/single" --weights model)
expect_match("${out}" "wrote 3 images")
if(NOT EXISTS "${WORK_DIR}/single/000002.png")
  message(FATAL_ERROR "ddpm-sample did not write one PNG per image")
endif()

# A fresh run does not overwrite an earlier run's checkpoints, and a failed
# start leaves its config.toml alone.
file(READ "${WORK_DIR}/results/config.toml" config_before)
run_program(1 out "${BIN_DIR}/ddpm-train" --folder "${WORK_DIR}/images"
            --results-folder "${WORK_DIR}/results" ${model_flags} --dim 16)
expect_match("${out}" "already contains model-[0-9]+\\.pt; pass --resume")
run_program(1 out "${BIN_DIR}/ddpm-train" --folder "${WORK_DIR}/images"
            --results-folder "${WORK_DIR}/results" ${model_flags} --dim 16
            --resume 2)
expect_match("${out}" "the model expects \\[16, 1, 7, 7\\]")
file(READ "${WORK_DIR}/results/config.toml" config_after)
if(NOT config_before STREQUAL config_after)
  message(FATAL_ERROR "a failed start rewrote config.toml")
endif()

# The output location is checked before sampling.
run_program(1 out "${BIN_DIR}/ddpm-sample"
            --checkpoint "${WORK_DIR}/results/model-2.pt"
            --output "${WORK_DIR}/missing/grid.png")
expect_match("${out}" "folder of --output .* does not exist")
if(out MATCHES "DDIM step")
  message(FATAL_ERROR "ddpm-sample sampled before checking --output")
endif()

# A truncated checkpoint is named without a C++ stack trace.
execute_process(COMMAND python3 -c
  "import sys; d = open(sys.argv[1], 'rb').read(); open(sys.argv[2], 'wb').write(d[:len(d) // 2])"
  "${WORK_DIR}/results/model-2.pt" "${WORK_DIR}/truncated.pt")
run_program(1 out "${BIN_DIR}/ddpm-sample" --checkpoint "${WORK_DIR}/truncated.pt"
            --config "${WORK_DIR}/results/config.toml")
expect_match("${out}" "is truncated or not a torch.save file")
if(out MATCHES "frame #")
  message(FATAL_ERROR "the error shows a stack trace:\n${out}")
endif()

# Errors name the value and what is expected.
run_program(1 out "${BIN_DIR}/ddpm-train" --folder "${WORK_DIR}/images"
            --results-folder "${WORK_DIR}/results-errors" ${model_flags}
            --num-samples 24)
expect_match("${out}" "num_samples must be a perfect square")
run_program(1 out "${BIN_DIR}/ddpm-train" --folder "${WORK_DIR}/missing"
            --results-folder "${WORK_DIR}/results-errors" ${model_flags})
expect_match("${out}" "image folder does not exist")
run_program(1 out "${BIN_DIR}/ddpm-train" --folder "${WORK_DIR}/images"
            --results-folder "${WORK_DIR}/results-errors" --image-size 10
            --channels 1 --dim 8 --dim-mults 1 2 4)
expect_match("${out}" "divisible by the Unet's downsample factor 4")
run_program(1 out "${BIN_DIR}/ddpm-sample"
            --checkpoint "${WORK_DIR}/results/model-2.pt" --dim 16)
expect_match("${out}" "with shape \\[8, 1, 7, 7\\], the model expects \\[16, 1, 7, 7\\]")
run_program(105 out "${BIN_DIR}/ddpm-train" --folder "${WORK_DIR}/images"
            --dim 0)
expect_match("${out}" "--dim: must be positive, got 0")
run_program(105 out "${BIN_DIR}/ddpm-train" --folder "${WORK_DIR}/images"
            --objective pred_eps)
expect_match("${out}" "pred_eps not in")

# Each invalid flag fails before any work with the option's name, the value
# given and the allowed values or range. CLI11 exits with 105 for a failed
# check and the programs with 1 for an error that the library reports.
function(expect_rejected expected_result pattern)
  run_program(${expected_result} out ${ARGN})
  expect_match("${out}" "${pattern}")
endfunction()
set(train "${BIN_DIR}/ddpm-train" --folder "${WORK_DIR}/images"
    --results-folder "${WORK_DIR}/results-errors")
expect_rejected(105 "--dim-mults: must be positive, got 0"
                ${train} --dim-mults 1 0)
expect_rejected(105 "--attn-heads: must be positive, got -2"
                ${train} --attn-heads -2)
expect_rejected(105 "--attn-dim-head: must be positive, got 0"
                ${train} --attn-dim-head 0)
expect_rejected(105 "--channels: 2 not in"
                ${train} --channels 2)
expect_rejected(105 "--timesteps: must be positive, got -10"
                ${train} --timesteps -10)
expect_rejected(105 "--beta-schedule: quadratic not in"
                ${train} --beta-schedule quadratic)
expect_rejected(105 "--loss-type: huber not in" ${train} --loss-type huber)
expect_rejected(105 "--cosine-s: must be at least 0, got -1"
                ${train} --cosine-s -1)
expect_rejected(105 "--sigmoid-tau: must be a finite number, got inf"
                ${train} --sigmoid-tau inf)
expect_rejected(105 "--train-lr: must be positive, got 0"
                ${train} --train-lr 0)
expect_rejected(105 "--train-lr: must be a finite number, got nan"
                ${train} --train-lr nan)
expect_rejected(105 "--train-lr: must be a number, got \"fast\""
                ${train} --train-lr fast)
expect_rejected(105 "--ema-decay: Value 1.5 not in range"
                ${train} --ema-decay 1.5)
expect_rejected(105 "--train-batch-size: must be positive, got 0"
                ${train} --train-batch-size 0)
expect_rejected(105 "--max-image-pixels: must be positive, got 0"
                ${train} --max-image-pixels 0)
expect_rejected(105 "--lr-schedule: linear not in"
                ${train} --lr-schedule linear)
expect_rejected(1 "sampling_timesteps must be in \\[1, timesteps = 20\\], got 50"
                ${train} ${model_flags} --sampling-timesteps 50)
expect_rejected(1 "lr_min must be in \\[0, train_lr = 0.0001\\], got 0.5"
                ${train} ${model_flags} --lr-min 0.5)
expect_rejected(1 "attn_heads must have 1 or 2 entries"
                ${train} ${model_flags} --attn-heads 4 4 4)
expect_rejected(105 "--num-samples: must be positive, got 0"
                "${BIN_DIR}/ddpm-sample"
                --checkpoint "${WORK_DIR}/results/model-2.pt" --num-samples 0)
expect_rejected(105 "--batch-size: must be positive, got -1"
                "${BIN_DIR}/ddpm-sample"
                --checkpoint "${WORK_DIR}/results/model-2.pt" --batch-size -1)
expect_rejected(105 "--weights: best not in"
                "${BIN_DIR}/ddpm-sample"
                --checkpoint "${WORK_DIR}/results/model-2.pt" --weights best)
expect_rejected(105 "--limit: Value -2 not in range"
                "${BIN_DIR}/ddpm-export-idx" --input "${WORK_DIR}/images.idx"
                --output "${WORK_DIR}/images" --limit -2)

# Images above --max-image-pixels are skipped with a warning each, and
# training fails once none is left.
run_program(1 out ${train} ${model_flags} --max-image-pixels 63)
expect_match("${out}" "8x8 = 64 pixels, more than max_image_pixels = 63")
expect_match("${out}" "no readable images in")

file(WRITE "${WORK_DIR}/typo.toml" "dimm=8\n")
run_program(110 out "${BIN_DIR}/ddpm-train" --folder "${WORK_DIR}/images"
            --config "${WORK_DIR}/typo.toml")
expect_match("${out}" "dimm")

# Every option has help text with its default.
run_program(0 out "${BIN_DIR}/ddpm-train" --help)
expect_match("${out}" "--train-lr FLOAT:POSITIVE=0.0001")
expect_match("${out}" "--sampling-timesteps")
message(STATUS "programs work end to end")
