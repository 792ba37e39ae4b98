#pragma once

#include <string>

#include <ATen/core/ivalue.h>

namespace ddpm {

/// Reads a file written by Python's torch.save (the zip format of PyTorch
/// 1.6 and later) into an IValue. Dicts and OrderedDicts become generic
/// dicts, and lists and tuples stay lists and tuples. Tensors come back
/// contiguous on the CPU with their dtype and shape. Int, float, bool, str
/// and None map to themselves.
///
/// It is a complete reader for the part of the pickle protocol that
/// torch.save emits for state dicts, optimizer states and checkpoints, and
/// it rejects every other global (so loading runs no code, as
/// torch.load(weights_only=True)). LibTorch's own torch::pickle_load cannot
/// read Python's OrderedDict state dicts. Throws c10::Error naming `path`
/// and the byte offset for a truncated or malformed file.
c10::IValue read_torch_save(const std::string& path);

} // namespace ddpm
