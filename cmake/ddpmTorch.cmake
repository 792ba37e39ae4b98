# Finds LibTorch and makes it linkable when it comes from the PyPI `torch` wheel.
#
# The wheel's libtorch_cuda.so needs the CUDA, cuDNN and NCCL libraries that pip
# installs under site-packages/nvidia/*/lib. The loader finds them at run time
# through the library's own RUNPATH, but the linker does not, and it may instead
# pick an older system copy (for example NCCL from /usr/lib) and fail with
# undefined references. Pointing -rpath-link at the wheel's folders fixes that.
include_guard(GLOBAL)

if(NOT TARGET torch)
  find_package(Torch REQUIRED)
endif()

get_filename_component(_ddpm_torch_lib_dir "${TORCH_LIBRARY}" DIRECTORY)
get_filename_component(_ddpm_site_packages "${_ddpm_torch_lib_dir}/../.."
                       ABSOLUTE)
file(GLOB _ddpm_wheel_lib_dirs LIST_DIRECTORIES true
     "${_ddpm_site_packages}/nvidia/*/lib")
if(_ddpm_wheel_lib_dirs AND NOT WIN32)
  list(JOIN _ddpm_wheel_lib_dirs ":" _ddpm_rpath_link)
  get_target_property(_ddpm_torch_link_options torch INTERFACE_LINK_OPTIONS)
  if(NOT _ddpm_torch_link_options MATCHES "rpath-link")
    set_property(TARGET torch APPEND PROPERTY INTERFACE_LINK_OPTIONS
                 "LINKER:-rpath-link,${_ddpm_rpath_link}")
  endif()
endif()

