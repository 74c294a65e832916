// deltatune tune --model DIR --data TASK [--space space.yaml] --trials N [--timeout S] --out RUN_DIR
//                [--storage URL] [--k-shot K --data-seeds S] ... : method and hyperparameter search.
// The search is Optuna's (TPE, Hyperband pruning, its storage for resuming and for several workers),
// so this command hands over to the Python module: it runs `python3 -m deltatune.tune ARGS` with the
// module found next to this binary (a build folder's python/) or installed, and returns its exit code.
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "command.h"

namespace {
namespace fs = std::filesystem;

// The interpreter: DELTATUNE_PYTHON, else Debian's (where apt's optuna lives), else python3 on PATH.
std::string python() {
  if (const char* p = std::getenv("DELTATUNE_PYTHON"); p && *p) return p;
  return fs::exists("/usr/bin/python3") ? "/usr/bin/python3" : "python3";
}

// The folder holding the deltatune package beside this binary (build/deltatune -> build/python), or ""
// when the package is to come from the interpreter's own path (pip install).
std::string package_dir() {
  std::error_code ec;
  const fs::path self = fs::read_symlink("/proc/self/exe", ec);
  if (ec) return "";
  for (const fs::path& candidate :
       {self.parent_path() / "python", self.parent_path() / ".." / "lib" / "deltatune" / "python"})
    if (fs::exists(candidate / "deltatune" / "tune.py")) return fs::canonical(candidate).string();
  return "";
}

[[noreturn]] void hand_over(const std::vector<std::string>& args) {
  const std::string dir = package_dir();
  if (!dir.empty()) {
    const char* old = std::getenv("PYTHONPATH");
    const std::string path = old && *old ? dir + ":" + old : dir;
    setenv("PYTHONPATH", path.c_str(), 1);
  }
  std::vector<std::string> argv{python(), "-m", "deltatune.tune"};
  argv.insert(argv.end(), args.begin(), args.end());
  std::vector<char*> raw;
  for (auto& a : argv) raw.push_back(a.data());
  raw.push_back(nullptr);
  execvp(raw[0], raw.data());
  throw deltatune::cli::ExitError{"tune: cannot run " + argv[0] + " (" + std::string(std::strerror(errno)) +
                                      "); it needs Python 3 with optuna (apt install python3-optuna) and the "
                                      "deltatune module (make python)",
                                  1};
}

void setup(CLI::App& app) {
  // Every argument, --help included, is the Python module's (argparse checks and documents them).
  app.set_help_flag();
  app.allow_extras();
  app.prefix_command();
  app.callback([&app] { hand_over(app.remaining()); });
}
deltatune::cli::Register reg("tune", "Search delta methods and hyperparameters with Optuna (tune --help)",
                             setup);
}  // namespace
