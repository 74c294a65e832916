// A run's curves as a small self-contained SVG (no plotting library needed to look at a run).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>

#include "deltatune/error.h"
#include "deltatune/trainer.h"
#include "train/files.h"
#include "train/svg.h"

namespace fs = std::filesystem;

namespace deltatune::train {
namespace {

struct Series {
  std::string name, color;
  std::vector<std::pair<double, double>> points;  // (step, value)
  bool right_axis = false;
  double width = 1.5;
};

std::string num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.4g", v);
  return buf;
}

// A moving average over a window of about 1/25 of the run: the raw per-update loss is noisy.
std::vector<std::pair<double, double>> smooth(const std::vector<std::pair<double, double>>& p) {
  const size_t window = std::max<size_t>(1, p.size() / 25);
  std::vector<std::pair<double, double>> out;
  double sum = 0;
  for (size_t i = 0; i < p.size(); ++i) {
    sum += p[i].second;
    if (i >= window) sum -= p[i - window].second;
    out.emplace_back(p[i].first, sum / double(std::min(i + 1, window)));
  }
  return out;
}

}  // namespace

std::vector<nlohmann::json> read_log(const fs::path& log_file) {
  std::ifstream in(log_file);
  if (!in) throw IoError(log_file.string() + ": cannot read the run log");
  std::vector<nlohmann::json> entries;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    try {
      entries.push_back(nlohmann::json::parse(line));
    } catch (const nlohmann::json::exception&) {
      // A line cut short by a crash: skip it, the rest of the log is still worth plotting.
    }
  }
  return entries;
}

std::string training_plot_svg(const std::vector<nlohmann::json>& log, const std::string& metric) {
  Series raw{"train loss", "#9ecae1", {}, false, 0.8}, train{"train loss (avg)", "#1f77b4", {}, false, 2};
  Series dev_loss{"dev loss", "#ff7f0e", {}, false, 2},
      dev_metric{"dev " + metric, "#2ca02c", {}, metric != "loss", 2};
  for (const auto& e : log) {
    if (!e.is_object() || !e.contains("step")) continue;
    const double step = e["step"].get<double>();
    const std::string type = e.value("type", "");
    if (type == "train" && e.contains("loss") && e["loss"].is_number())
      raw.points.emplace_back(step, e["loss"].get<double>());
    if (type == "eval") {
      if (e.contains("loss") && e["loss"].is_number())
        dev_loss.points.emplace_back(step, e["loss"].get<double>());
      if (metric != "loss" && e.contains(metric) && e[metric].is_number())
        dev_metric.points.emplace_back(step, e[metric].get<double>());
    }
  }
  train.points = smooth(raw.points);
  std::vector<Series*> all{&raw, &train, &dev_loss};
  if (metric != "loss") all.push_back(&dev_metric);

  const double W = 720, H = 360, left = 60, right = 60, top = 30, bottom = 50;
  double max_step = 1, max_loss = 0, min_metric = 0, max_metric = 1;
  for (Series* s : all)
    for (auto& [x, y] : s->points) {
      max_step = std::max(max_step, x);
      if (!std::isfinite(y)) continue;
      if (s->right_axis) {
        min_metric = std::min(min_metric, y);
        max_metric = std::max(max_metric, y);
      } else {
        max_loss = std::max(max_loss, y);
      }
    }
  if (max_loss <= 0) max_loss = 1;
  max_loss *= 1.05;
  auto px = [&](double step) { return left + (W - left - right) * step / max_step; };
  auto py_left = [&](double v) { return top + (H - top - bottom) * (1 - v / max_loss); };
  auto py_right = [&](double v) {
    return top + (H - top - bottom) * (1 - (v - min_metric) / (max_metric - min_metric));
  };

  using svg::element;
  std::string body;
  const auto add = [&](const std::string& line) { body += line + "\n"; };  // one element a line
  const auto text = [](const std::string& x, const std::string& y, const std::string& content,
                       svg::Attributes more = {}) {
    svg::Attributes a{{"x", x}, {"y", y}};
    a.insert(a.end(), more.begin(), more.end());
    return element("text", a, content);
  };
  const svg::Attributes middle{{"text-anchor", "middle"}};
  // Axes, grid and tick labels.
  for (int i = 0; i <= 4; ++i) {
    const double frac = i / 4.0, y = top + (H - top - bottom) * (1 - frac);
    add(element(
        "line",
        {{"x1", num(left)}, {"y1", num(y)}, {"x2", num(W - right)}, {"y2", num(y)}, {"stroke", "#eee"}}));
    add(text(num(left - 6), num(y + 4), num(max_loss * frac), {{"text-anchor", "end"}}));
    if (metric != "loss")
      add(text(num(W - right + 6), num(y + 4), num(min_metric + (max_metric - min_metric) * frac)));
    add(text(num(px(max_step * frac)), num(H - bottom + 16), num(std::round(max_step * frac)), middle));
  }
  add(element("rect", {{"x", num(left)},
                       {"y", num(top)},
                       {"width", num(W - left - right)},
                       {"height", num(H - top - bottom)},
                       {"fill", "none"},
                       {"stroke", "#888"}}));
  add(text(num(W / 2), num(H - 12), "step", middle));
  const auto rotated = [&](double x, int degrees) {
    return svg::Attributes{
        {"transform", "rotate(" + std::to_string(degrees) + " " + num(x) + " " + num(H / 2) + ")"},
        {"text-anchor", "middle"}};
  };
  add(text("14", num(H / 2), "loss", rotated(14, -90)));
  if (metric != "loss") add(text(num(W - 12), num(H / 2), svg::escape(metric), rotated(W - 12, 90)));
  // Curves (a single evaluation gets a dot, since a line needs two points).
  double legend_x = left;
  for (Series* s : all) {
    if (s->points.empty()) continue;
    const auto py = [&](double v) { return num(s->right_axis ? py_right(v) : py_left(v)); };
    std::string pts;
    for (auto& [x, y] : s->points)
      if (std::isfinite(y)) pts += num(px(x)) + "," + py(y) + " ";
    add(element("polyline",
                {{"fill", "none"}, {"stroke", s->color}, {"stroke-width", num(s->width)}, {"points", pts}}));
    if (s->points.size() <= 30 && s != &raw && s != &train)
      for (auto& [x, y] : s->points)
        if (std::isfinite(y))
          add(element("circle", {{"cx", num(px(x))}, {"cy", py(y)}, {"r", "2.5"}, {"fill", s->color}}));
    add(element("rect",
                {{"x", num(legend_x)}, {"y", "10"}, {"width", "12"}, {"height", "4"}, {"fill", s->color}}) +
        text(num(legend_x + 16), "16", svg::escape(s->name)));
    legend_x += 30 + 6.5 * double(s->name.size());
  }
  return svg::document(W, H, body);
}

fs::path write_training_plot(const fs::path& run_dir, const std::string& metric) {
  const fs::path out = run_dir / "plot.svg";
  train_detail::write_file_atomic(out, training_plot_svg(read_log(run_dir / "log.jsonl"), metric));
  return out;
}

}  // namespace deltatune::train
