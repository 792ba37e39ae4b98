#pragma once

namespace ddpm {

/// Sets glibc's malloc to keep the memory that tensors free for reuse.
///
/// By default glibc serves large blocks with fresh mappings and trims the
/// heap after frees. A loop that allocates and frees activations of the same
/// sizes then page-faults on every iteration: 40% of the time of a CPU
/// sampling run in docs/BENCHMARKS.md. After this call, blocks up to 32 MiB
/// come from the heap and the heap is not trimmed, at some cost in peak
/// resident memory.
///
/// The setting is process-wide, so the library never calls this itself.
/// ddpm-train and ddpm-sample call it unless given --no-retain-freed-memory.
/// Call it before large allocations. Returns whether it took effect, which
/// is false where the C library is not glibc or a sanitizer replaces malloc.
bool retain_freed_memory();

} // namespace ddpm
