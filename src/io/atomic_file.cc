#include "deltatune/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>

#include "deltatune/error.h"

namespace fs = std::filesystem;

namespace deltatune {
namespace {

std::string errno_text() { return std::strerror(errno); }

fs::path folder_of(const fs::path& file) {
  return file.has_parent_path() ? file.parent_path() : fs::path(".");
}

}  // namespace

AtomicFile::AtomicFile(fs::path file) : file_(std::move(file)) {
  if (fs::is_directory(file_)) throw IoError(file_.string() + ": is a folder, expected a file");
  // Unique within the folder: the pid for other processes, a counter for other threads. Hidden, so a
  // listing of the folder does not show a half-written file.
  static std::atomic<uint64_t> counter{0};
  // (Appended piece by piece: GCC 12 warns falsely of overlapping copies in "." + string&&.)
  std::string name = ".";
  name += file_.filename().string();
  name += ".tmp-" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
  temp_ = folder_of(file_) / name;
  // Mode 0666 lets the umask decide, as for any newly created file.
  fd_ = ::open(temp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
  if (fd_ < 0)
    throw IoError(file_.string() + ": cannot be written (creating " + temp_.string() + ": " + errno_text() +
                  ")");
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink(temp_.c_str());
}

void AtomicFile::write(const void* data, size_t size) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    // Linux moves at most ~2 GiB per call; larger pieces take several.
    const ssize_t written = ::write(fd_, p, std::min<size_t>(size, size_t(1) << 30));
    if (written < 0) {
      if (errno == EINTR) continue;
      throw IoError(file_.string() + ": write failed: " + errno_text());
    }
    p += written;
    size -= size_t(written);
  }
}

void AtomicFile::commit() {
  if (::fsync(fd_) != 0) throw IoError(file_.string() + ": fsync failed: " + errno_text());
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) throw IoError(file_.string() + ": close failed: " + errno_text());
  if (::rename(temp_.c_str(), file_.c_str()) != 0)
    throw IoError(file_.string() + ": cannot rename " + temp_.string() + " into place: " + errno_text());
  committed_ = true;
  // Make the rename itself durable; failing here loses nothing, so it is best effort.
  const int dir = ::open(folder_of(file_).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir >= 0) {
    ::fsync(dir);
    ::close(dir);
  }
}

void write_file_atomic(const fs::path& file, std::string_view content) {
  AtomicFile out(file);
  out.write(content.data(), content.size());
  out.commit();
}

}  // namespace deltatune
