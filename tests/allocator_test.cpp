#include <cstdlib>
#include <cstring>

#include <gtest/gtest.h>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include "ddpm/allocator.h"

// Sanitizers replace malloc with their own, which ignores mallopt.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define DDPM_MALLOC_REPLACED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) || \
    __has_feature(memory_sanitizer)
#define DDPM_MALLOC_REPLACED 1
#endif
#endif

namespace ddpm {
namespace {

#if defined(DDPM_MALLOC_REPLACED)
TEST(AllocatorTest, RetainFreedMemoryFailsUnderSanitizer) {
  EXPECT_FALSE(retain_freed_memory());
}
#elif defined(__GLIBC__)
// A 20 MiB block, the size of a large activation: after
// retain_freed_memory() it comes from the heap rather than a fresh mapping,
// and freeing it leaves the heap at its size.
TEST(AllocatorTest, RetainFreedMemoryKeepsBlocksOnTheHeap) {
  ASSERT_TRUE(retain_freed_memory());
  constexpr size_t kBytes = 20 << 20;
  const size_t mapped_before = mallinfo2().hblkhd;
  void* volatile block = std::malloc(kBytes);
  ASSERT_NE(block, nullptr);
  std::memset(block, 1, kBytes);
  EXPECT_EQ(mallinfo2().hblkhd, mapped_before)
      << "the block was mapped separately";
  const size_t heap_with_block = mallinfo2().arena;
  EXPECT_GE(heap_with_block, kBytes);
  std::free(block);
  EXPECT_EQ(mallinfo2().arena, heap_with_block) << "the heap was trimmed";
}
#else
TEST(AllocatorTest, RetainFreedMemoryNeedsGlibc) {
  EXPECT_FALSE(retain_freed_memory());
}
#endif

} // namespace
} // namespace ddpm
