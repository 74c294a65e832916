#pragma once
// Checks on a command's output folder, made before any work (loading data or a model), so that a
// folder that cannot be written is reported up front and nothing the user had is replaced unasked.
#include <filesystem>
#include <string>

namespace deltatune::cli {

// ExitError unless `dir` (given as `flag`) is a folder that can be written, or can be created: says
// whether a file is in the way, the folder is not writable, or the file system refuses. Creates nothing.
void check_writable_folder(const std::filesystem::path& dir, const std::string& flag);

// Whether `dir` exists and holds anything.
bool holds_files(const std::filesystem::path& dir);

}  // namespace deltatune::cli
