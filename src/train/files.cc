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

fs::path folder_path(const fs::path& dir) {
  fs::path d = dir.lexically_normal();
  return d.has_filename() ? d : d.parent_path();
}

}  // namespace deltatune::train_detail
