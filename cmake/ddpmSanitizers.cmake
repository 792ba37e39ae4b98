# Compiler instrumentation for the sanitizer and fuzzing builds. It applies
# to every target of this project; LibTorch itself stays uninstrumented.

if(DDPM_SANITIZE)
  # Any UndefinedBehaviorSanitizer report fails the program, so a test that
  # triggers one fails. The vptr check is off because LibTorch's classes
  # come from a library built without it.
  add_compile_options(-fsanitize=address,undefined
                      -fno-sanitize-recover=undefined -fno-sanitize=vptr
                      -fno-omit-frame-pointer)
  add_link_options(-fsanitize=address,undefined)
endif()

if(DDPM_FUZZ)
  if(NOT CMAKE_CXX_COMPILER_ID MATCHES "Clang")
    message(FATAL_ERROR "DDPM_FUZZ needs clang (libFuzzer), the compiler is "
                        "${CMAKE_CXX_COMPILER_ID}; configure with "
                        "-DCMAKE_CXX_COMPILER=clang++")
  endif()
  # Coverage feedback from the library's own code; the targets add the
  # libFuzzer main themselves.
  add_compile_options(-fsanitize=fuzzer-no-link)
endif()

if(DDPM_SANITIZE OR DDPM_FUZZ)
  # Two checks are off for the stb implementations only, for undefined
  # behaviour in stb_image 2.27 that the fuzz target found and that has no
  # effect on memory:
  # - memcpy with a null buffer and length 0, on empty PNG chunks;
  # - a shift of its 32-bit JPEG bit buffer by 32 or more, when corrupt
  #   entropy-coded data uses more bits than remain. The bits shifted in are
  #   garbage, so the pixels of such a file are too, and every index stb
  #   takes from them is masked to its table's size.
  # The checks stay on for every other file.
  set_source_files_properties(${PROJECT_SOURCE_DIR}/src/io/stb_impl.cpp
    PROPERTIES COMPILE_OPTIONS
    "-fno-sanitize=nonnull-attribute,shift-exponent")
endif()
