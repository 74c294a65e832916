#pragma once
// The one way deltatune writes a file: into a temporary file next to it, flushed to disk, then renamed
// over the target. A reader (or a crash, or Ctrl-C) sees either the old file or the complete new one,
// never a half-written file.
#include <cstddef>
#include <filesystem>
#include <string>
#include <string_view>

namespace deltatune {

// Writes `content` to `file` atomically. IoError naming `file` when it cannot be written.
void write_file_atomic(const std::filesystem::path& file, std::string_view content);

// The same for content written in pieces (a safetensors file's tensors): write() as often as needed,
// then commit(). A file never committed is removed and the target is left as it was.
class AtomicFile {
 public:
  explicit AtomicFile(std::filesystem::path file);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, size_t size);
  void commit();  // fsync, rename into place, fsync the folder

 private:
  std::filesystem::path file_, temp_;
  int fd_ = -1;
  bool committed_ = false;
};

}  // namespace deltatune
