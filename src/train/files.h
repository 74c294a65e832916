#pragma once
// Small file helpers for the training code: whole-file reads, atomic writes (deltatune/atomic_file.h)
// and atomic folder replacement, so an interrupted run never leaves a half-written file.
#include <filesystem>
#include <string>
#include <system_error>

#include "deltatune/atomic_file.h"

namespace deltatune::train_detail {

// The file's bytes; IoError naming the file when it cannot be read.
std::string read_file(const std::filesystem::path& file);
using deltatune::write_file_atomic;  // the library's one atomic write, under the name callers here use
// Replaces folder `target` by folder `staged` (written completely beforehand): the old target is
// moved aside, the new one renamed into place, then the old one removed. A crash in between leaves
// either the old or the new folder, plus at most a leftover "<target>.old" that recover_folder() uses.
void replace_folder(const std::filesystem::path& staged, const std::filesystem::path& target);
// If `target` is missing but "<target>.old" exists (a crash inside replace_folder), moves it back.
void recover_folder(const std::filesystem::path& target);

// "run/delta/" and "run/delta" name the same folder; the trailing slash would break sibling names.
std::filesystem::path folder_path(const std::filesystem::path& dir);

// Writes a whole folder: `write(staged)` fills "<target>.tmp", which then replaces `target`. If writing
// fails (a full disk), the staged folder is removed and `target` stays as it was.
template <class Write>
void write_folder(const std::filesystem::path& target, Write write) {
  const std::filesystem::path dir = folder_path(target);
  std::filesystem::path staged = dir;
  staged += ".tmp";
  std::error_code ignored;
  std::filesystem::remove_all(staged, ignored);
  std::filesystem::create_directories(staged);
  try {
    write(staged);
  } catch (...) {
    std::filesystem::remove_all(staged, ignored);
    throw;
  }
  replace_folder(staged, dir);
}

}  // namespace deltatune::train_detail
