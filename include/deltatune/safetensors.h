#pragma once
// Reading and writing Hugging Face safetensors files and checkpoint folders.
//
// Format: 8 bytes little-endian header length N, N bytes of JSON header
// ({"__metadata__": {str: str}, "NAME": {"dtype", "shape", "data_offsets": [begin, end]}, ...}),
// then the data section that the offsets index. Every malformed file gives an IoError whose one-line
// message reads "FILE: tensor 'NAME': PROBLEM" or "FILE: PROBLEM".
#include <filesystem>
#include <map>
#include <string>

#include "deltatune/tensor.h"

namespace deltatune {

struct TensorFile {
  std::map<std::string, Tensor> tensors;        // by name
  std::map<std::string, std::string> metadata;  // the header's "__metadata__", if any
};

// Memory-maps the file. Tensors of our dtypes (F32, F16, BF16, I32, I64) are zero-copy views into
// the mapping, which stays alive while any of them does. The mapping is private copy-on-write: writing
// into a loaded tensor never changes the file. F64 tensors are converted to F32 (a copy), as are
// tensors whose bytes are not aligned for their dtype; any other file dtype is an IoError.
TensorFile read_safetensors(const std::filesystem::path& file);

// A checkpoint folder holding model.safetensors, or shards listed by model.safetensors.index.json
// ("weight_map": tensor name -> shard file). Also accepts the path of a .safetensors file or of an
// index file directly.
std::map<std::string, Tensor> load_checkpoint_tensors(const std::filesystem::path& dir_or_file);

// Once a tensor read from a file has been copied or quantised elsewhere: its pages of the file mapping
// leave the process (were it read again, they would come back from the file), so that loading a
// checkpoint holds each weight once rather than twice. Any tensor that is not a view of a file mapping
// (a converted copy, memory of our own) is left alone. Nothing of the tensor may have been written.
void release_file_pages(const Tensor& t);

// Writes tensors (CPU, any dtype, any layout) exactly as Hugging Face's safetensors library does:
// data ordered by dtype (widest first) then name, header keys in that same order after "__metadata__"
// (present when metadata is non-empty), header padded with spaces to a multiple of 8 bytes.
// The write is atomic: a temporary file in the same folder, fsync, then rename over `file`.
void write_safetensors(const std::filesystem::path& file, const std::map<std::string, Tensor>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace deltatune
