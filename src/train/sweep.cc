// The method-comparison sweep (see include/deltatune/sweep.h): plans the grid, runs each unfinished
// cell in-process (few-shot sampling, then the training workflow of deltatune/workflow.h with early
// stopping on the few-shot dev set, then test metrics and timed inference on the best weights), and
// builds the tables and the plot from the summaries.
#include "deltatune/sweep.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <initializer_list>
#include <map>
#include <set>
#include <sstream>

#include "deltatune/atomic_file.h"
#include "deltatune/data.h"
#include "deltatune/delta.h"
#include "deltatune/error.h"
#include "deltatune/json_file.h"
#include "deltatune/method_presets.h"
#include "deltatune/metrics.h"
#include "deltatune/model.h"
#include "deltatune/tokenizer.h"
#include "deltatune/trainer.h"
#include "deltatune/workflow.h"
#include "train/files.h"
#include "train/svg.h"

namespace deltatune::train {
namespace fs = std::filesystem;
using nlohmann::json;

const std::vector<std::string>& default_sweep_methods() {
  static const std::vector<std::string> names = {"full",   "bitfit", "houlsby", "pfeiffer",   "prefix",
                                                 "prompt", "lora",   "ia3",     "unipelt-ap", "unipelt-apl"};
  return names;
}

namespace {

std::string task_name(const fs::path& dir) {
  fs::path p = dir;
  if (p.filename().empty()) p = p.parent_path();
  return p.filename().string();
}

// A name of the method table whose delta config builds (a `combination` needs its deltas listed,
// which a sweep cannot give), so a bad grid fails before its first run.
void check_sweep_method(const std::string& name) {
  const MethodPreset& m = method_preset(name);
  if (m.trains != MethodPreset::Trains::Delta) return;
  try {
    delta::make_delta(m.delta_config);
  } catch (const ConfigError& e) {
    throw ConfigError("sweep: method '" + name + "' cannot run as it is: " + e.what());
  }
}

// "k100", "seed2": appended rather than `"k" + std::to_string(k)`, which GCC 12 misreads as an
// overlapping copy (-Wrestrict, GCC bug 105329).
std::string numbered(const char* prefix, uint64_t n) {
  std::string s = prefix;
  s += std::to_string(n);
  return s;
}

// ",a,b": CSV fields appended to a row (built by appending, for the same reason as numbered()).
std::string csv_fields(std::initializer_list<std::string> fields) {
  std::string s;
  for (const auto& f : fields) {
    s += ',';
    s += f;
  }
  return s;
}

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

}  // namespace

std::vector<SweepRun> sweep_plan(const SweepOptions& o) {
  if (o.tasks.empty()) throw ConfigError("sweep: no tasks given");
  if (o.methods.empty()) throw ConfigError("sweep: no methods given");
  if (o.k_shots.empty() || o.seeds.empty()) throw ConfigError("sweep: no K-shot sizes or no seeds given");
  for (const auto& m : o.methods) check_sweep_method(m);  // bad names fail before any run
  for (int64_t k : o.k_shots)
    if (k <= 0) throw ConfigError("sweep: K must be positive, got " + std::to_string(k));
  std::vector<SweepRun> plan;
  for (uint64_t seed : o.seeds)
    for (int64_t k : o.k_shots)
      for (const auto& task_dir : o.tasks)
        for (const auto& method : o.methods) {
          SweepRun r;
          r.method = method;
          r.task = task_name(task_dir);
          r.task_dir = task_dir;
          r.k = k;
          r.seed = seed;
          r.dir = o.out_dir / r.task / numbered("k", k) / method / numbered("seed", seed);
          plan.push_back(std::move(r));
        }
  return plan;
}

bool sweep_run_finished(const SweepRun& run) { return fs::is_regular_file(run.dir / "summary.json"); }

workflow::TrainRequest sweep_cell_request(const SweepOptions& o, const SweepRun& run) {
  workflow::TrainRequest r;
  r.model_dir = o.model_dir;
  r.method = run.method;
  r.lr = o.lr;
  r.lr = workflow::learning_rate(r) * o.lr_scale;  // the method's default unless the sweep sets one
  TrainOptions& options = r.options;
  auto ke = o.epochs_for_k.find(run.k);
  options.epochs = ke != o.epochs_for_k.end() ? ke->second : o.epochs;
  options.max_steps = o.max_steps;
  options.batch_size = o.batch_size;
  options.seed = run.seed;
  options.eval_every = o.eval_every;
  options.patience = o.patience;
  options.metric = "accuracy";
  options.run_dir = run.dir;
  options.progress = false;
  // The best dev weights are reloaded from best/ onto a fresh model by the one loader, which reads every
  // method's saved form (e.g. prefix tuning's collapsed MLP, which the live delta cannot take back).
  options.restore_best = false;
  r.max_length = o.max_length;
  r.test_before = false;
  r.evaluate_test = false;    // the cell times its own test pass, on the best weights
  r.write_run_files = false;  // a cell leaves labels.json, log.jsonl, best/, checkpoint/, summary.json
  return r;
}

json run_sweep_cell(const SweepOptions& o, const SweepRun& run) {
  const auto started = std::chrono::steady_clock::now();
  const MethodPreset& method = method_preset(run.method);

  // Few-shot data (the workflow draws it): the training set shuffled with the seed, K to train, the next
  // (<= max_dev) as dev, the classes those of the whole training set.
  data::Task task = data::load_task(run.task_dir);
  workflow::TrainRequest request = sweep_cell_request(o, run);
  request.splits = {
      std::move(task.train), {}, task.test.empty() ? std::move(task.dev) : std::move(task.test)};
  request.k_shot = run.k;
  request.max_dev = o.max_dev;
  request.max_test = o.max_test;

  // A run interrupted before its summary starts again from scratch (its old files are removed).
  fs::remove_all(run.dir);
  workflow::TrainRun trained = workflow::run_training(request);
  const TrainResult& result = trained.result;
  TransformerModel* tested = trained.model.get();
  LoadedModel best;
  if (result.best_step >= 0 && result.best_step != result.steps && fs::exists(run.dir / "best")) {
    LoadRequest load;
    load.model_dir = o.model_dir;
    load.delta = run.dir / "best";
    load.classifier = true;  // labels.json in the run folder names the classes
    best = load_with_delta(load);
    tested = best.model.get();
  }

  // Inference: the test set once, timed (after one warm-up batch, so first-touch costs do not count).
  const data::EncodedDataset& test_set = trained.test_set;
  {
    data::EncodedDataset warm;
    warm.examples.assign(test_set.examples.begin(),
                         test_set.examples.begin() + std::min<size_t>(test_set.size(), 8));
    predict(*tested, warm, 64);
  }
  const auto infer_start = std::chrono::steady_clock::now();
  Predictions p = predict(*tested, test_set, 64);
  const double infer_seconds = seconds_since(infer_start);
  json test_metrics = metrics::classification_metrics(p.predicted, p.labels);
  test_metrics["loss"] = p.loss;

  if (!o.keep_weights) {
    fs::remove_all(run.dir / "checkpoint");
    fs::remove_all(run.dir / "best");
  }
  json summary = {{"method", run.method},
                  {"task", run.task},
                  {"task_dir", run.task_dir.string()},
                  {"k", run.k},
                  {"seed", run.seed},
                  {"model", o.model_dir.string()},
                  {"delta_config", method.delta_config},
                  {"lr", trained.lr},
                  {"epochs", request.options.epochs},
                  {"patience", o.patience},
                  {"eval_every", o.eval_every},
                  {"max_steps", o.max_steps},
                  {"batch_size", o.batch_size},
                  {"max_length", o.max_length},
                  {"train_examples", trained.train_set.size()},
                  {"dev_examples", trained.dev_set.size()},
                  {"test_examples", test_set.size()},
                  {"trainable_params", result.trainable},
                  {"total_params", result.total},
                  {"steps", result.steps},
                  {"best_step", result.best_step},
                  {"stop_reason", result.stop_reason},
                  {"dev", result.best_dev},
                  {"test", test_metrics},
                  {"train_seconds", result.seconds},
                  {"infer_seconds", infer_seconds},
                  {"total_seconds", seconds_since(started)}};
  train_detail::write_file_atomic(run.dir / "summary.json", summary.dump(2) + "\n");
  return summary;
}

namespace {

std::vector<std::string> task_names(const SweepOptions& o) {
  std::vector<std::string> tasks;
  for (const auto& t : o.tasks) tasks.push_back(task_name(t));
  return tasks;
}

// Rank 0 receives every process's finished summaries (writing those its folder lacks: processes on
// other machines) and the report is summed, so that every process returns the job's.
void gather_to_lead(const SweepOptions& o, distributed::Communicator& comm,
                    const std::vector<std::pair<const SweepRun*, json>>& finished, SweepReport& report) {
  if (comm.size() == 1) return;
  for (int root = 0; root < comm.size(); ++root) {
    std::string payload;
    if (comm.rank() == root) {
      json mine = json::array();
      for (const auto& [run, summary] : finished)
        mine.push_back({{"dir", fs::relative(run->dir, o.out_dir).string()}, {"summary", summary}});
      payload = json{{"runs", mine}, {"failures", report.failures}}.dump();
    }
    comm.broadcast(payload, root);
    if (root == comm.rank()) continue;
    const json theirs = json::parse(payload);
    for (const json& f : theirs["failures"]) report.failures.push_back(f.get<std::string>());
    if (comm.rank() != 0) continue;
    for (const json& r : theirs["runs"]) {
      const fs::path file = o.out_dir / r["dir"].get<std::string>() / "summary.json";
      if (fs::exists(file)) continue;
      fs::create_directories(file.parent_path());
      write_file_atomic(file, r["summary"].dump(2) + "\n");
    }
  }
  double counts[3] = {double(report.ran), double(report.skipped), double(report.failed)};
  comm.allreduce_sum(counts);
  report.ran = int64_t(counts[0]);
  report.skipped = int64_t(counts[1]);
  report.failed = int64_t(counts[2]);
  report.other_shards = report.planned - report.ran - report.skipped - report.failed;
}

}  // namespace

SweepReport run_sweep(const SweepOptions& o) {
  if (o.shard_count < 1 || o.shard_index < 0 || o.shard_index >= o.shard_count)
    throw ConfigError("sweep: shard must be i/n with 0 <= i < n, got " + std::to_string(o.shard_index) + "/" +
                      std::to_string(o.shard_count));
  if (!o.only_method.empty()) check_sweep_method(o.only_method);
  const std::shared_ptr<distributed::Communicator> comm =
      o.communicator ? o.communicator : distributed::single_process();
  const bool lead = comm->rank() == 0;
  // This process's piece: the shard's cells dealt out over the processes.
  const size_t pieces = size_t(o.shard_count * comm->size());
  const size_t piece = size_t(o.shard_index + o.shard_count * comm->rank());
  const std::vector<SweepRun> plan = sweep_plan(o);
  SweepReport report;
  report.planned = int64_t(plan.size());
  fs::create_directories(o.out_dir);
  std::vector<const SweepRun*> mine;
  for (size_t i = 0; i < plan.size(); ++i) {
    const SweepRun& r = plan[i];
    if (i % pieces != piece || (!o.only_method.empty() && r.method != o.only_method) ||
        (!o.only_task.empty() && r.task != o.only_task)) {
      ++report.other_shards;
      continue;
    }
    if (sweep_run_finished(r)) {
      ++report.skipped;
      continue;
    }
    mine.push_back(&r);
  }
  const std::string who = comm->size() > 1 ? "rank " + std::to_string(comm->rank()) + " " : "";
  std::vector<std::pair<const SweepRun*, json>> finished;
  const auto started = std::chrono::steady_clock::now();
  for (size_t i = 0; i < mine.size(); ++i) {
    const SweepRun& r = *mine[i];
    if (o.progress)
      std::fprintf(stderr, "%s[%zu/%zu] %s k=%lld seed=%llu %s ...\n", who.c_str(), i + 1, mine.size(),
                   r.task.c_str(), (long long)r.k, (unsigned long long)r.seed, r.method.c_str());
    try {
      const json s = run_sweep_cell(o, r);
      ++report.ran;
      finished.emplace_back(&r, s);
      if (o.progress)
        std::fprintf(
            stderr,
            "  %stest accuracy %.4f, %lld steps (%s), train %.1f s, inference %.2f s; %.0f s elapsed\n",
            who.c_str(), s["test"]["accuracy"].get<double>(), (long long)s["steps"].get<int64_t>(),
            s["stop_reason"].get<std::string>().c_str(), s["train_seconds"].get<double>(),
            s["infer_seconds"].get<double>(), seconds_since(started));
    } catch (const std::exception& e) {
      ++report.failed;
      report.failures.push_back(r.dir.string() + ": " + e.what());
      if (o.progress) std::fprintf(stderr, "  %sFAILED: %s\n", who.c_str(), e.what());
    }
    // The tables grow as runs finish, so a sweep stopped half way still leaves them.
    if (lead) write_sweep_tables(o.out_dir, o.methods, task_names(o));
  }
  gather_to_lead(o, *comm, finished, report);
  if (lead) write_sweep_tables(o.out_dir, o.methods, task_names(o));
  comm->barrier();  // the tables exist when any process returns
  return report;
}

// --- tables ---

namespace {

struct Stats {
  double mean = 0, std = 0;
  size_t n = 0;
};
Stats stats(const std::vector<double>& v) {
  Stats s;
  s.n = v.size();
  if (v.empty()) return s;
  for (double x : v) s.mean += x;
  s.mean /= double(v.size());
  if (v.size() > 1) {
    double ss = 0;
    for (double x : v) ss += (x - s.mean) * (x - s.mean);
    s.std = std::sqrt(ss / double(v.size() - 1));  // sample standard deviation over seeds
  }
  return s;
}

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

// One row of a K-shot table.
struct Row {
  std::string method;
  std::map<std::string, Stats> task;  // test accuracy x 100
  bool complete = false;              // every task has a run
  double avg = 0;                     // mean over tasks of the per-task means
  double params_pct = 0;
  double train_seconds = 0, infer_seconds = 0;  // means over runs
  double step_seconds =
      0;  // mean over runs of train_seconds / steps (early stopping ends runs at different steps)
  size_t runs = 0;
};

}  // namespace

std::string write_sweep_tables(const fs::path& out_dir, const std::vector<std::string>& methods_in,
                               const std::vector<std::string>& tasks_in) {
  // Collect every finished run.
  std::vector<json> runs;
  if (fs::is_directory(out_dir))
    for (const auto& e : fs::recursive_directory_iterator(out_dir))
      if (e.is_regular_file() && e.path().filename() == "summary.json") {
        try {
          json s = read_json_file(e.path());
          if (s.contains("method") && s.contains("k") && s.contains("test")) runs.push_back(std::move(s));
        } catch (const std::exception&) {
          // a file being written by another shard: it will be counted by the next rebuild
        }
      }
  std::vector<std::string> methods = methods_in, tasks = tasks_in;
  std::set<int64_t> ks;
  for (const auto& s : runs) {
    ks.insert(s["k"].get<int64_t>());
    const std::string m = s["method"], t = s["task"];
    if (methods_in.empty() && std::find(methods.begin(), methods.end(), m) == methods.end())
      methods.push_back(m);
    if (tasks_in.empty() && std::find(tasks.begin(), tasks.end(), t) == tasks.end()) tasks.push_back(t);
  }

  std::string md;
  std::string csv = "k,method";
  for (const auto& t : tasks) csv += "," + t + "_mean," + t + "_std";
  csv +=
      ",average,trainable_params_pct,train_time_rel_full,step_time_rel_full,inference_time_rel_full,train_"
      "seconds,"
      "inference_seconds,runs\n";
  std::map<int64_t, std::vector<Row>> all_rows;

  for (int64_t k : ks) {
    std::vector<Row> rows;
    for (const auto& m : methods) {
      Row row;
      row.method = m;
      std::vector<double> train_s, infer_s, step_s, pct;
      for (const auto& t : tasks) {
        std::vector<double> acc;
        for (const auto& s : runs)
          if (s["k"] == k && s["method"] == m && s["task"] == t) {
            acc.push_back(100.0 * s["test"]["accuracy"].get<double>());
            train_s.push_back(s["train_seconds"].get<double>());
            step_s.push_back(s["train_seconds"].get<double>() /
                             std::max<double>(1.0, s["steps"].get<double>()));
            // inference per test example, so runs on differently sized test sets compare
            infer_s.push_back(s["infer_seconds"].get<double>() /
                              std::max<double>(1.0, s["test_examples"].get<double>()));
            pct.push_back(100.0 * s["trainable_params"].get<double>() / s["total_params"].get<double>());
          }
        if (!acc.empty()) row.task[t] = stats(acc);
      }
      row.runs = train_s.size();
      if (row.runs == 0) continue;
      row.complete = row.task.size() == tasks.size();
      for (auto& [_, st] : row.task) row.avg += st.mean / double(row.task.size());
      row.train_seconds = stats(train_s).mean;
      row.infer_seconds = stats(infer_s).mean;
      row.step_seconds = stats(step_s).mean;
      row.params_pct = stats(pct).mean;
      rows.push_back(std::move(row));
    }
    const Row* full = nullptr;
    for (const auto& r : rows)
      if (r.method == "full") full = &r;
    // Best mean per task column and for the average (bold in the markdown).
    std::map<std::string, double> best;
    double best_avg = -1;
    for (const auto& r : rows) {
      for (auto& [t, st] : r.task) best[t] = std::max(best.count(t) ? best[t] : -1.0, st.mean);
      if (r.complete) best_avg = std::max(best_avg, r.avg);
    }

    md += "### K = " + std::to_string(k) + "\n\n| method |";
    for (const auto& t : tasks) md += " " + t + " |";
    md += " avg | trainable params | train time | time per step | inference time |\n|---|";
    for (size_t i = 0; i < tasks.size(); ++i) md += "---:|";
    md += "---:|---:|---:|---:|---:|\n";
    for (const auto& r : rows) {
      md += "| " + r.method + " |";
      csv += std::to_string(k) + "," + r.method;
      for (const auto& t : tasks) {
        auto it = r.task.find(t);
        if (it == r.task.end()) {
          md += " – |";
          csv += ",,";
          continue;
        }
        std::string cell = fmt("%.1f", it->second.mean) + " ± " + fmt("%.1f", it->second.std);
        if (it->second.n < 2) cell += " (n=" + std::to_string(it->second.n) + ")";
        if (it->second.mean >= best[t]) cell = "**" + cell + "**";
        md += " " + cell + " |";
        csv += csv_fields({fmt("%.4f", it->second.mean), fmt("%.4f", it->second.std)});
      }
      std::string avg = r.complete ? fmt("%.1f", r.avg) : fmt("%.1f", r.avg) + " (partial)";
      if (r.complete && r.avg >= best_avg) avg = "**" + avg + "**";
      const bool rel = full && full->train_seconds > 0 && full->step_seconds > 0 && full->infer_seconds > 0;
      md += " " + avg + " | " + fmt(r.params_pct >= 1 ? "%.1f%%" : "%.3f%%", r.params_pct) + " | " +
            (rel ? fmt("%.2f×", r.train_seconds / full->train_seconds) : fmt("%.1f s", r.train_seconds)) +
            " | " +
            (rel ? fmt("%.2f×", r.step_seconds / full->step_seconds) : fmt("%.3f s", r.step_seconds)) +
            " | " +
            (rel ? fmt("%.2f×", r.infer_seconds / full->infer_seconds)
                 : fmt("%.2f ms/ex", 1000 * r.infer_seconds)) +
            " |\n";
      csv += "," + (r.complete ? fmt("%.4f", r.avg) : std::string()) + "," + fmt("%.5f", r.params_pct) + "," +
             (rel ? fmt("%.4f", r.train_seconds / full->train_seconds) : std::string()) + "," +
             (rel ? fmt("%.4f", r.step_seconds / full->step_seconds) : std::string()) + "," +
             (rel ? fmt("%.4f", r.infer_seconds / full->infer_seconds) : std::string()) + "," +
             fmt("%.3f", r.train_seconds) + "," + fmt("%.6f", r.infer_seconds * 1000) + "," +
             std::to_string(r.runs) + "\n";
    }
    md += "\n";
    all_rows[k] = std::move(rows);
  }
  if (md.empty()) md = "(no finished runs yet)\n";
  md = "Test accuracy (%), mean ± sample std over seeds; avg = mean over the tasks; trainable params include "
       "the classification head, as % of the model's parameters; train time (a run's training with its dev "
       "evaluations; early stopping ends runs at different steps), time per step (train time / steps) and "
       "inference time (per test example) relative to full fine-tuning at the same K. "
       "Best per column in bold.\n\n" +
       md;

  // The plot: average accuracy per method, one bar per K.
  std::string svg_body;
  {
    using svg::element;
    const std::vector<std::string> colors = {"#4878d0", "#ee854a", "#6acc64", "#d65f5f", "#956cb4"};
    const double W = 760, H = 360, left = 56, right = 16, top = 34, bottom = 92;
    const size_t nm = methods.size();
    std::vector<int64_t> klist(ks.begin(), ks.end());
    double lo = 100, hi = 0;
    for (auto& [k, rows] : all_rows)
      for (auto& r : rows) lo = std::min(lo, r.avg), hi = std::max(hi, r.avg);
    if (hi < lo) lo = 0, hi = 100;
    lo = std::max(0.0, std::floor((lo - 5) / 10) * 10);
    hi = std::min(100.0, std::ceil((hi + 2) / 10) * 10);
    if (hi <= lo) hi = lo + 10;
    auto py = [&](double v) { return top + (H - top - bottom) * (1 - (v - lo) / (hi - lo)); };
    auto px1 = [](double v) { return fmt("%.1f", v); };  // coordinates to a tenth of a pixel
    auto hline = [&](double v, const char* stroke) {
      return element("line", {{"x1", px1(left)},
                              {"y1", px1(py(v))},
                              {"x2", px1(W - right)},
                              {"y2", px1(py(v))},
                              {"stroke", stroke}});
    };
    const double group = (W - left - right) / double(std::max<size_t>(1, nm));
    const double bar = group * 0.8 / double(std::max<size_t>(1, klist.size()));
    svg_body =
        element("text",
                {{"x", fmt("%.0f", W / 2)}, {"y", "16"}, {"text-anchor", "middle"}, {"font-size", "13"}},
                "average test accuracy over tasks (%)") +
        "\n";
    for (double v = lo; v <= hi + 1e-9; v += 10)
      svg_body += hline(v, "#ddd") +
                  element("text", {{"x", px1(left - 6)}, {"y", px1(py(v) + 4)}, {"text-anchor", "end"}},
                          fmt("%.0f", v)) +
                  "\n";
    for (size_t mi = 0; mi < nm; ++mi) {
      const double gx = left + group * double(mi) + group * 0.1;
      for (size_t ki = 0; ki < klist.size(); ++ki) {
        for (const auto& r : all_rows[klist[ki]])
          if (r.method == methods[mi]) {
            const double x = gx + bar * double(ki), y = py(r.avg);
            svg::Attributes a{{"x", px1(x)},
                              {"y", px1(y)},
                              {"width", px1(bar * 0.92)},
                              {"height", px1(py(lo) - y)},
                              {"fill", colors[ki % colors.size()]}};
            if (!r.complete) a.emplace_back("fill-opacity", "0.4");
            const std::string title =
                svg::escape(r.method) + " K=" + std::to_string(klist[ki]) + ": " + fmt("%.1f", r.avg);
            svg_body += element("rect", a, element("title", {}, title)) + "\n";
          }
      }
      const double cx = left + group * (double(mi) + 0.5), cy = H - bottom + 12;
      svg_body += element("text",
                          {{"x", px1(cx)},
                           {"y", px1(cy)},
                           {"text-anchor", "end"},
                           {"transform", "rotate(-35 " + px1(cx) + " " + px1(cy) + ")"}},
                          svg::escape(methods[mi])) +
                  "\n";
    }
    svg_body += hline(lo, "black") + "\n";
    for (size_t ki = 0; ki < klist.size(); ++ki) {
      const double lx = W - right - 90 * double(klist.size() - ki);
      svg_body += element("rect", {{"x", px1(lx)},
                                   {"y", "24"},
                                   {"width", "12"},
                                   {"height", "10"},
                                   {"fill", colors[ki % colors.size()]}}) +
                  element("text", {{"x", px1(lx + 16)}, {"y", "33"}}, "K = " + std::to_string(klist[ki])) +
                  "\n";
    }
    svg_body = svg::document(W, H, svg_body);
  }
  train_detail::write_file_atomic(out_dir / "table.md", md);
  train_detail::write_file_atomic(out_dir / "table.csv", csv);
  train_detail::write_file_atomic(out_dir / "plot.svg", svg_body);
  return md;
}

}  // namespace deltatune::train
