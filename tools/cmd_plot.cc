// deltatune plot RUN_DIR [--metric NAME] : redraws RUN_DIR/plot.svg (training loss, dev loss and the
// dev metric against the step) from RUN_DIR/log.jsonl, e.g. while a run is still going.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "command.h"
#include "deltatune/metrics.h"
#include "deltatune/trainer.h"

namespace {
using namespace deltatune;
namespace fs = std::filesystem;

void setup(CLI::App& app) {
  auto run_dir = std::make_shared<std::string>(), metric = std::make_shared<std::string>();
  app.add_option("run_dir", *run_dir, "Run folder written by `deltatune train`")->required();
  app.add_option("--metric", *metric, "Dev metric to draw (default: the run's)");
  app.callback([=] {
    if (!fs::exists(fs::path(*run_dir) / "log.jsonl"))
      throw cli::ExitError{*run_dir + ": no log.jsonl (not a run folder of `deltatune train`?)"};
    std::string m = *metric;
    if (m.empty()) {
      m = "accuracy";
      const fs::path config = fs::path(*run_dir) / "train_config.json";
      if (fs::exists(config)) {
        try {
          std::ifstream in(config);
          m = nlohmann::json::parse(in).value("metric", m);
        } catch (const std::exception&) {
          // The default metric will do.
        }
      }
    }
    // An unknown metric would draw an empty axis over the run's plot.svg.
    const std::vector<std::string>& known = metrics::all_selection_metrics();
    if (std::find(known.begin(), known.end(), m) == known.end()) {
      std::string names;
      for (const auto& n : known) names += (names.empty() ? "" : ", ") + n;
      throw cli::ExitError{"--metric '" + m + "' is unknown (known: " + names + ")"};
    }
    std::printf("%s\n", train::write_training_plot(*run_dir, m).string().c_str());
  });
}
deltatune::cli::Register reg("plot", "Draw a run's loss and dev metric curves as an SVG", setup);
}  // namespace
