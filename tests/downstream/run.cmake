# Installs the built library into a scratch prefix, then configures, builds
# and runs tests/downstream against it, as an application would.
#
# Variables: BUILD_DIR, SOURCE_DIR, WORK_DIR, Torch_DIR.

function(run_step description)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE result
                  OUTPUT_VARIABLE output ERROR_VARIABLE output)
  if(NOT result EQUAL 0)
    message(FATAL_ERROR "${description} failed (${result}):\n${output}")
  endif()
  set(step_output "${output}" PARENT_SCOPE)
endfunction()

file(REMOVE_RECURSE "${WORK_DIR}")
run_step("install" ${CMAKE_COMMAND} --install "${BUILD_DIR}"
         --prefix "${WORK_DIR}/prefix")
run_step("configure" ${CMAKE_COMMAND} -S "${SOURCE_DIR}/tests/downstream"
         -B "${WORK_DIR}/build" -DCMAKE_BUILD_TYPE=Release
         "-DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix" "-DTorch_DIR=${Torch_DIR}")
run_step("build" ${CMAKE_COMMAND} --build "${WORK_DIR}/build")
run_step("run" "${WORK_DIR}/build/downstream")
if(NOT step_output MATCHES "sampled 2 x 1 x 8 x 8")
  message(FATAL_ERROR "unexpected output of the application: ${step_output}")
endif()
message(STATUS "downstream application: ${step_output}")
