#pragma once
// Checks on a folder a run (or a command) writes, made before any work (loading data or a model), so
// that a folder that cannot be written is reported up front and nothing the user had is replaced
// unasked. workflow::run_training makes them itself; a front end may make them earlier with its own
// flag names in the messages.
#include <filesystem>
#include <string>

namespace deltatune {

// How the messages name the folder and the two ways past a non-empty one (a CLI: "--out", "--resume",
// "--overwrite").
struct RunFolderNames {
  std::string folder = "run folder";
  std::string resume = "resume";
  std::string overwrite = "overwrite";
};

// IoError unless `dir` (named `what`) is a folder that can be written, or can be created: says whether
// a file is in the way, the folder is not writable, or the file system refuses. Creates nothing.
void check_writable_folder(const std::filesystem::path& dir, const std::string& what);

// Whether `dir` exists and holds anything.
bool holds_files(const std::filesystem::path& dir);

// A training run's folder: writable; with `resume` it must hold a checkpoint, and without `resume` or
// `overwrite` it must hold nothing (an earlier run's delta, log and checkpoint would be replaced).
void check_run_folder(const std::filesystem::path& dir, bool resume, bool overwrite,
                      const RunFolderNames& names = {});

}  // namespace deltatune
