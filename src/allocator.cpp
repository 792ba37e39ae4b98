#include "ddpm/allocator.h"

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace ddpm {

bool retain_freed_memory() {
#if defined(__GLIBC__)
  // The ceiling of glibc's adaptive threshold on 64-bit systems (mallopt(3)).
  // Setting any threshold also stops the adaptation.
  constexpr int kMmapThreshold = 32 << 20;
  // 2 GiB of free memory at the top of the heap before a trim, so in
  // practice the heap is not trimmed.
  constexpr int kTrimThreshold = 0x7fffffff;
  return mallopt(M_MMAP_THRESHOLD, kMmapThreshold) == 1 &&
         mallopt(M_TRIM_THRESHOLD, kTrimThreshold) == 1;
#else
  return false;
#endif
}

} // namespace ddpm
