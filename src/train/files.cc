#include "train/files.h"

#include <fstream>
#include <sstream>

#include "deltatune/error.h"

namespace fs = std::filesystem;

namespace deltatune::train_detail {

std::string read_file(const fs::path& file) {
  if (!fs::exists(file)) throw IoError(file.string() + ": file does not exist");
  if (fs::is_directory(file)) throw IoError(file.string() + ": is a folder, expected a file");
  std::ifstream in(file, std::ios::binary);
  if (!in) throw IoError(file.string() + ": cannot open the file for reading");
  std::ostringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) throw IoError(file.string() + ": read error");
  return buffer.str();
}

void write_file_atomic(const fs::path& file, const std::string& content) {
  fs::path tmp = file;
  tmp += ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw IoError(file.string() + ": cannot open for writing");
    out.write(content.data(), std::streamsize(content.size()));
    out.flush();
    if (!out) {
      std::error_code ignored;
      fs::remove(tmp, ignored);
      throw IoError(file.string() + ": write failed (disk full?)");
    }
  }
  std::error_code ec;
  fs::rename(tmp, file, ec);
  if (ec) throw IoError(file.string() + ": cannot rename the temporary file into place: " + ec.message());
}

void replace_folder(const fs::path& staged, const fs::path& target) {
  fs::path old = target;
  old += ".old";
  std::error_code ec;
  fs::remove_all(old, ec);
  if (fs::exists(target)) {
    fs::rename(target, old, ec);
    if (ec) throw IoError(target.string() + ": cannot move the previous folder aside: " + ec.message());
  }
  fs::rename(staged, target, ec);
  if (ec) throw IoError(target.string() + ": cannot rename the new folder into place: " + ec.message());
  fs::remove_all(old, ec);
}

void recover_folder(const fs::path& target) {
  fs::path old = target;
  old += ".old";
  if (!fs::exists(target) && fs::exists(old)) {
    std::error_code ec;
    fs::rename(old, target, ec);
  }
}

}  // namespace deltatune::train_detail
