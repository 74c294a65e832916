// The `deltatune` command: subcommands register themselves (command.h); errors become one line and
// exit code 2 (bad input, usage errors included) or 1 (internal failure), never a crash. --help and
// --version print and exit 0.
#include <algorithm>
#include <csignal>
#include <cstdio>
#include <iostream>

#include "command.h"
#include "deltatune/distributed.h"
#include "deltatune/error.h"
#include "deltatune/runtime.h"
#include "wait_policy.h"

namespace deltatune::cli {
std::vector<Command>& registry() {
  static std::vector<Command> commands;
  return commands;
}

namespace {
// CLI11's messages may span lines; a usage error is reported as one.
std::string one_line(std::string text) {
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  std::replace(text.begin(), text.end(), '\n', ' ');
  return text;
}

// A process of an MPI job that fails alone would leave the others waiting in a collective: the whole
// job ends with it (MPI_Abort; mpirun reports which process and the code).
int failed(const std::string& message, int code) {
  const auto job = distributed::world();
  const std::string who = job->size() > 1 ? "process " + std::to_string(job->rank()) + ": " : "";
  std::fprintf(stderr, "deltatune: %s%s\n", who.c_str(), message.c_str());
  if (job->size() > 1) job->abort(code);
  return code;
}

// Where to read the options: the subcommand's help when one was given.
std::string help_hint(CLI::App& app) {
  const std::vector<CLI::App*> given = app.get_subcommands();
  if (given.empty()) return " (see `deltatune --help`)";
  return " (see `deltatune " + given.back()->get_name() + " --help`)";
}
}  // namespace
}  // namespace deltatune::cli

int main(int argc, char** argv) {
  using namespace deltatune;
  cli::choose_openmp_wait_policy(argv);  // before anything else: it may start the program again
  // A file-size limit (ulimit -f) would kill us mid-write with SIGXFSZ; ignored, the write fails with
  // EFBIG instead and is reported like a full disk: a clear error, the files already there kept.
  std::signal(SIGXFSZ, SIG_IGN);
  // Activation-sized buffers stay in the heap between training steps (deltatune/runtime.h).
  apply(RuntimeSettings{.heap = HeapTuning::for_training()});
  CLI::App app{"deltatune: delta tuning (parameter-efficient fine-tuning) of transformer language models"};
  app.set_version_flag("--version", std::string("deltatune ") + DELTATUNE_VERSION);
  app.require_subcommand(1);
  auto& commands = cli::registry();
  std::sort(commands.begin(), commands.end(), [](auto& a, auto& b) { return a.name < b.name; });
  for (auto& command : commands) {
    CLI::App* sub = app.add_subcommand(command.name, command.description);
    command.setup(*sub);
    // Each command's help ends with the exit codes, after any footer of its own.
    const std::string own = sub->get_footer();
    sub->footer(own.empty() ? std::string(cli::kExitCodes) : own + "\n\n" + cli::kExitCodes);
  }
  // Set after the commands: CLI11 copies a parent's footer into each command it adds, which printed the
  // exit codes twice in every command's help.
  app.footer(std::string("Run `deltatune COMMAND --help` for a command's options.\n\n") + cli::kExitCodes);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == static_cast<int>(CLI::ExitCodes::Success))
      return app.exit(e);  // --help, --version
    // CLI11 takes an unknown command for a missing one.
    const bool unknown_command = app.get_subcommands().empty() && argc > 1 && argv[1][0] != '-';
    const std::string what =
        unknown_command ? "unknown command '" + std::string(argv[1]) + "'" : cli::one_line(e.what());
    std::fprintf(stderr, "deltatune: %s%s\n", what.c_str(), cli::help_hint(app).c_str());
    return 2;
  } catch (const cli::ExitError& e) {
    return cli::failed(e.message, e.code);
  } catch (const Error& e) {  // IoError, ConfigError and the rest: bad input
    return cli::failed(e.what(), 2);
  } catch (const std::exception& e) {
    return cli::failed(std::string("internal error: ") + e.what(), 1);
  }
  return 0;
}
