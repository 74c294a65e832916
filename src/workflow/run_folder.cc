#include "deltatune/run_folder.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "deltatune/error.h"
#include "train/checkpoint.h"

namespace fs = std::filesystem;

namespace deltatune {
namespace {

// Appended, not concatenated: GCC 12's -O3 warns (-Wrestrict, a false positive) on "'" + s + "'".
std::string quoted(const fs::path& p) {
  std::string out(1, '\'');
  out += p.string();
  out += '\'';
  return out;
}

// Permission bits do not tell (root, read-only mounts, ACLs): create and remove a probe file.
std::string write_problem(const fs::path& folder) {
  const fs::path probe = folder / (".deltatune-write-check-" + std::to_string(::getpid()));
  const int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) return std::strerror(errno);
  ::close(fd);
  ::unlink(probe.c_str());
  return "";
}

}  // namespace

void check_writable_folder(const fs::path& dir, const std::string& flag) {
  std::error_code ec;
  const fs::file_status status = fs::status(dir, ec);
  if (fs::exists(status)) {
    if (!fs::is_directory(status))
      throw IoError(flag + " " + quoted(dir) + " is a file, not a folder; give a folder to write into");
    if (std::string problem = write_problem(dir); !problem.empty())
      throw IoError(flag + " " + quoted(dir) + ": cannot write into this folder (" + problem + ")");
    return;
  }
  // The folder will be created: its nearest existing ancestor must be a folder we can write into.
  fs::path ancestor = fs::absolute(dir, ec).lexically_normal();
  for (fs::path parent = ancestor.parent_path(); parent != ancestor; parent = ancestor.parent_path()) {
    ancestor = parent;
    const fs::file_status s = fs::status(ancestor, ec);
    if (!fs::exists(s)) continue;
    if (!fs::is_directory(s))
      throw IoError(flag + " " + quoted(dir) + " cannot be created: " + quoted(ancestor) + " is a file");
    if (std::string problem = write_problem(ancestor); !problem.empty())
      throw IoError(flag + " " + quoted(dir) + " cannot be created: cannot write into " + quoted(ancestor) +
                    " (" + problem + ")");
    return;
  }
  throw IoError(flag + " " + quoted(dir) + " cannot be created: none of its parent folders exists");
}

bool holds_files(const fs::path& dir) {
  std::error_code ec;
  return fs::is_directory(dir, ec) && !fs::is_empty(dir, ec);
}

void check_run_folder(const fs::path& dir, bool resume, bool overwrite, const RunFolderNames& names) {
  check_writable_folder(dir, names.folder);
  const fs::path checkpoint = dir / "checkpoint";
  if (resume && !train_detail::checkpoint_exists(checkpoint))
    throw IoError(names.resume + ": no checkpoint in '" + checkpoint.string() + "' to continue from");
  if (!resume && !overwrite && holds_files(dir))
    throw IoError(names.folder + " '" + dir.string() + "' is not empty (an earlier run?): pass " +
                  names.resume + " to continue its run from its checkpoint, or " + names.overwrite +
                  " to start over (its run files are removed)");
}

}  // namespace deltatune
