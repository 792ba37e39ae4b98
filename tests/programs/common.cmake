# Helpers shared by the CMake-script tests of the programs.

# Runs a command and fails the test unless it exits with 0.
function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE result
                  OUTPUT_VARIABLE output ERROR_VARIABLE output)
  if(NOT result EQUAL 0)
    list(JOIN ARGN " " command)
    message(FATAL_ERROR "${command}\nexited with ${result}:\n${output}")
  endif()
  message(STATUS "${output}")
endfunction()

# Writes an IDX image file (magic 0x00000803) of `count` 8 x 8 images whose
# pixel i of image n is (n * step + i * 3) % 256.
function(write_idx_images path count step)
  math(EXPR last "${count} - 1")
  math(EXPR count_hex "${count}" OUTPUT_FORMAT HEXADECIMAL)
  string(SUBSTRING "${count_hex}" 2 -1 count_digits)
  string(LENGTH "${count_digits}" length)
  math(EXPR padding "8 - ${length}")
  string(REPEAT "0" ${padding} zeros)
  set(hex "00000803${zeros}${count_digits}0000000800000008")
  foreach(image RANGE ${last})
    foreach(pixel RANGE 63)
      math(EXPR value "(${image} * ${step} + ${pixel} * 3) % 256"
           OUTPUT_FORMAT HEXADECIMAL)
      string(SUBSTRING "${value}" 2 -1 digits)
      string(LENGTH "${digits}" length)
      if(length EQUAL 1)
        set(digits "0${digits}")
      endif()
      string(APPEND hex "${digits}")
    endforeach()
  endforeach()
  file(WRITE "${path}.hex" "${hex}")
  execute_process(COMMAND python3 -c
    "import sys; open(sys.argv[2], 'wb').write(bytes.fromhex(open(sys.argv[1]).read()))"
    "${path}.hex" "${path}" RESULT_VARIABLE result)
  if(NOT result EQUAL 0)
    message(FATAL_ERROR "could not write ${path}")
  endif()
endfunction()
