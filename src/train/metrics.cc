#include "deltatune/metrics.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <numeric>
#include <set>

#include "deltatune/error.h"

namespace deltatune::metrics {
namespace {

void check_sizes(size_t a, size_t b, const char* what) {
  if (a != b)
    throw ConfigError(std::string(what) + ": " + std::to_string(a) + " predictions but " + std::to_string(b) +
                      " labels");
}

// Confusion counts over the classes that occur on either side, indexed densely.
struct Confusion {
  std::vector<int64_t> classes;             // sorted class ids
  std::vector<std::vector<double>> counts;  // [true][predicted]
};

Confusion confusion(const std::vector<int64_t>& predictions, const std::vector<int64_t>& labels) {
  std::set<int64_t> seen(labels.begin(), labels.end());
  seen.insert(predictions.begin(), predictions.end());
  Confusion c;
  c.classes.assign(seen.begin(), seen.end());
  std::map<int64_t, size_t> index;
  for (size_t i = 0; i < c.classes.size(); ++i) index[c.classes[i]] = i;
  c.counts.assign(c.classes.size(), std::vector<double>(c.classes.size(), 0.0));
  for (size_t i = 0; i < labels.size(); ++i) c.counts[index[labels[i]]][index[predictions[i]]] += 1;
  return c;
}

double safe_div(double a, double b) { return b == 0 ? 0.0 : a / b; }

double f1_of(double precision, double recall) { return safe_div(2 * precision * recall, precision + recall); }

std::vector<double> ranks(const std::vector<double>& v) {
  std::vector<size_t> order(v.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return v[a] < v[b]; });
  std::vector<double> r(v.size());
  for (size_t i = 0; i < order.size();) {
    size_t j = i;
    while (j + 1 < order.size() && v[order[j + 1]] == v[order[i]]) ++j;
    const double average = (double(i) + double(j)) / 2.0 + 1.0;  // ties share their mean rank
    for (size_t k = i; k <= j; ++k) r[order[k]] = average;
    i = j + 1;
  }
  return r;
}

}  // namespace

double accuracy(const std::vector<int64_t>& predictions, const std::vector<int64_t>& labels) {
  check_sizes(predictions.size(), labels.size(), "accuracy");
  if (labels.empty()) return 0.0;
  int64_t correct = 0;
  for (size_t i = 0; i < labels.size(); ++i) correct += predictions[i] == labels[i];
  return double(correct) / double(labels.size());
}

double macro_f1(const std::vector<int64_t>& predictions, const std::vector<int64_t>& labels) {
  check_sizes(predictions.size(), labels.size(), "macro_f1");
  if (labels.empty()) return 0.0;
  Confusion c = confusion(predictions, labels);
  const size_t K = c.classes.size();
  double total = 0;
  for (size_t k = 0; k < K; ++k) {
    double tp = c.counts[k][k], true_count = 0, predicted_count = 0;
    for (size_t j = 0; j < K; ++j) {
      true_count += c.counts[k][j];
      predicted_count += c.counts[j][k];
    }
    total += f1_of(safe_div(tp, predicted_count), safe_div(tp, true_count));
  }
  return total / double(K);
}

double matthews_corrcoef(const std::vector<int64_t>& predictions, const std::vector<int64_t>& labels) {
  check_sizes(predictions.size(), labels.size(), "matthews_corrcoef");
  if (labels.empty()) return 0.0;
  Confusion c = confusion(predictions, labels);
  const size_t K = c.classes.size();
  std::vector<double> t_sum(K, 0), p_sum(K, 0);
  double correct = 0, n = double(labels.size());
  for (size_t i = 0; i < K; ++i) {
    correct += c.counts[i][i];
    for (size_t j = 0; j < K; ++j) {
      t_sum[i] += c.counts[i][j];
      p_sum[j] += c.counts[i][j];
    }
  }
  double tp_dot = 0, pp_dot = 0, tt_dot = 0;
  for (size_t k = 0; k < K; ++k) {
    tp_dot += t_sum[k] * p_sum[k];
    pp_dot += p_sum[k] * p_sum[k];
    tt_dot += t_sum[k] * t_sum[k];
  }
  const double cov_tp = correct * n - tp_dot, cov_pp = n * n - pp_dot, cov_tt = n * n - tt_dot;
  if (cov_pp * cov_tt == 0) return 0.0;
  return cov_tp / std::sqrt(cov_tt * cov_pp);
}

double pearson(const std::vector<double>& x, const std::vector<double>& y) {
  if (x.size() != y.size())
    throw ConfigError("pearson: " + std::to_string(x.size()) + " vs " + std::to_string(y.size()) + " values");
  const size_t n = x.size();
  if (n < 2) return 0.0;
  double mx = 0, my = 0;
  for (size_t i = 0; i < n; ++i) {
    mx += x[i];
    my += y[i];
  }
  mx /= double(n);
  my /= double(n);
  double sxy = 0, sxx = 0, syy = 0;
  for (size_t i = 0; i < n; ++i) {
    sxy += (x[i] - mx) * (y[i] - my);
    sxx += (x[i] - mx) * (x[i] - mx);
    syy += (y[i] - my) * (y[i] - my);
  }
  if (sxx == 0 || syy == 0) return 0.0;
  return sxy / std::sqrt(sxx * syy);
}

double spearman(const std::vector<double>& x, const std::vector<double>& y) {
  if (x.size() != y.size())
    throw ConfigError("spearman: " + std::to_string(x.size()) + " vs " + std::to_string(y.size()) +
                      " values");
  return pearson(ranks(x), ranks(y));
}

std::vector<ClassReport> per_class_report(const std::vector<int64_t>& predictions,
                                          const std::vector<int64_t>& labels,
                                          const std::vector<std::string>& names) {
  check_sizes(predictions.size(), labels.size(), "per_class_report");
  const size_t K = names.size();
  std::vector<double> tp(K, 0), true_count(K, 0), predicted_count(K, 0);
  auto in_range = [&](int64_t c) { return c >= 0 && size_t(c) < K; };
  for (size_t i = 0; i < labels.size(); ++i) {
    if (in_range(labels[i])) true_count[size_t(labels[i])] += 1;
    if (in_range(predictions[i])) predicted_count[size_t(predictions[i])] += 1;
    if (labels[i] == predictions[i] && in_range(labels[i])) tp[size_t(labels[i])] += 1;
  }
  std::vector<ClassReport> report(K);
  for (size_t k = 0; k < K; ++k) {
    report[k].name = names[k];
    report[k].precision = safe_div(tp[k], predicted_count[k]);
    report[k].recall = safe_div(tp[k], true_count[k]);
    report[k].f1 = f1_of(report[k].precision, report[k].recall);
    report[k].support = int64_t(true_count[k]);
  }
  return report;
}

std::string format_report(const std::vector<ClassReport>& report, double accuracy) {
  size_t width = 12;
  for (const auto& r : report) width = std::max(width, r.name.size());
  char line[512];
  std::string out;
  std::snprintf(line, sizeof line, "%*s %10s %10s %10s %10s\n", int(width), "", "precision", "recall",
                "f1-score", "support");
  out += line;
  int64_t total = 0;
  double p = 0, r = 0, f = 0;
  for (const auto& c : report) {
    std::snprintf(line, sizeof line, "%*s %10.4f %10.4f %10.4f %10lld\n", int(width), c.name.c_str(),
                  c.precision, c.recall, c.f1, static_cast<long long>(c.support));
    out += line;
    total += c.support;
    p += c.precision;
    r += c.recall;
    f += c.f1;
  }
  const double k = report.empty() ? 1.0 : double(report.size());
  out += "\n";
  std::snprintf(line, sizeof line, "%*s %10s %10s %10.4f %10lld\n", int(width), "accuracy", "", "", accuracy,
                static_cast<long long>(total));
  out += line;
  std::snprintf(line, sizeof line, "%*s %10.4f %10.4f %10.4f %10lld\n", int(width), "macro avg", p / k, r / k,
                f / k, static_cast<long long>(total));
  out += line;
  return out;
}

nlohmann::json report_json(const std::vector<ClassReport>& report) {
  nlohmann::json out = nlohmann::json::object();
  for (const auto& c : report)
    out[c.name] = {{"precision", c.precision}, {"recall", c.recall}, {"f1", c.f1}, {"support", c.support}};
  return out;
}

nlohmann::json classification_metrics(const std::vector<int64_t>& predictions,
                                      const std::vector<int64_t>& labels) {
  return {{"accuracy", accuracy(predictions, labels)},
          {"macro_f1", macro_f1(predictions, labels)},
          {"mcc", matthews_corrcoef(predictions, labels)}};
}

bool higher_is_better(const std::string& metric) { return metric != "loss" && metric != "perplexity"; }

const std::vector<std::string>& selection_metrics(bool language_model) {
  static const std::vector<std::string> classifier = {"accuracy", "macro_f1", "mcc", "loss"},
                                        lm = {"loss", "perplexity"};
  return language_model ? lm : classifier;
}

const std::vector<std::string>& all_selection_metrics() {
  static const std::vector<std::string> all = {"accuracy", "macro_f1", "mcc", "loss", "perplexity"};
  return all;
}

}  // namespace deltatune::metrics
