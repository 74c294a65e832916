#pragma once
// Evaluation metrics, computed as scikit-learn and SciPy compute them: accuracy, macro-averaged F1,
// Matthews correlation (multi-class form), Pearson and Spearman correlation (regression), and a
// per-class precision/recall/F1/support report.
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace deltatune::metrics {

// Fraction of predictions equal to the labels (0 for no examples).
double accuracy(const std::vector<int64_t>& predictions, const std::vector<int64_t>& labels);
// Unweighted mean of per-class F1 over the classes that occur in the labels or the predictions
// (sklearn's f1_score(average="macro")); a class with no predicted and no true examples is skipped,
// and 0/0 precision or recall counts as 0.
double macro_f1(const std::vector<int64_t>& predictions, const std::vector<int64_t>& labels);
// sklearn's matthews_corrcoef: the multi-class R_K statistic; 0 when undefined (a constant column).
double matthews_corrcoef(const std::vector<int64_t>& predictions, const std::vector<int64_t>& labels);

// Pearson's r; 0 when either side is constant.
double pearson(const std::vector<double>& x, const std::vector<double>& y);
// Spearman's rho: Pearson's r of the ranks, ties given their average rank (scipy.stats.spearmanr).
double spearman(const std::vector<double>& x, const std::vector<double>& y);

struct ClassReport {
  std::string name;
  double precision = 0, recall = 0, f1 = 0;
  int64_t support = 0;  // true examples of the class
};
// One row per class id in [0, names.size()), in id order.
std::vector<ClassReport> per_class_report(const std::vector<int64_t>& predictions,
                                          const std::vector<int64_t>& labels,
                                          const std::vector<std::string>& names);
// The report as an aligned text table, like sklearn's classification_report.
std::string format_report(const std::vector<ClassReport>& report, double accuracy);
nlohmann::json report_json(const std::vector<ClassReport>& report);

// {"accuracy", "macro_f1", "mcc"} for a classifier.
nlohmann::json classification_metrics(const std::vector<int64_t>& predictions,
                                      const std::vector<int64_t>& labels);

// Whether a larger value of the metric is better (not for "loss" and "perplexity").
bool higher_is_better(const std::string& metric);

// The dev metrics that can pick a run's best weights: a classifier's (accuracy, macro_f1, mcc, loss)
// or a language model's (loss, perplexity); all_selection_metrics() is both.
const std::vector<std::string>& selection_metrics(bool language_model);
const std::vector<std::string>& all_selection_metrics();

}  // namespace deltatune::metrics
