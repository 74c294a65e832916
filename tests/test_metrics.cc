// Metrics against values computed by hand (and matching scikit-learn / SciPy).
#include <gtest/gtest.h>

#include <cmath>

#include "deltatune/error.h"
#include "deltatune/metrics.h"

using namespace deltatune;

namespace {
// Three classes; per class (precision, recall, F1): 0 (1/2, 1/2, 1/2), 1 (2/3, 1, 4/5), 2 (1, 1/2, 2/3).
const std::vector<int64_t> kLabels = {0, 0, 1, 1, 2, 2};
const std::vector<int64_t> kPred = {0, 1, 1, 1, 2, 0};
}  // namespace

TEST(Metrics, Accuracy) {
  EXPECT_DOUBLE_EQ(metrics::accuracy({0, 1, 1, 0}, {0, 1, 0, 0}), 0.75);
  EXPECT_DOUBLE_EQ(metrics::accuracy(kPred, kLabels), 4.0 / 6.0);
  EXPECT_DOUBLE_EQ(metrics::accuracy({}, {}), 0.0);
  EXPECT_THROW(metrics::accuracy({0}, {0, 1}), ConfigError);
}

TEST(Metrics, MacroF1) {
  EXPECT_NEAR(metrics::macro_f1(kPred, kLabels), (0.5 + 0.8 + 2.0 / 3.0) / 3.0, 1e-12);
  // A class only predicted (never true) counts with F1 0, as in sklearn.
  EXPECT_NEAR(metrics::macro_f1({0, 0, 2}, {0, 0, 0}), (0.8 + 0.0) / 2.0, 1e-12);
  EXPECT_DOUBLE_EQ(metrics::macro_f1({1, 1}, {1, 1}), 1.0);
}

TEST(Metrics, MatthewsCorrelation) {
  // Binary: tp 3, fn 1, tn 3, fp 1 -> (9 - 1) / sqrt(4 * 4 * 4 * 4) = 0.5.
  EXPECT_NEAR(metrics::matthews_corrcoef({1, 0, 1, 0, 0, 1, 1, 0}, {1, 1, 1, 0, 0, 0, 1, 0}), 0.5, 1e-12);
  // Multi-class R_K: (4*6 - 12) / sqrt((36 - 12) * (36 - 14)).
  EXPECT_NEAR(metrics::matthews_corrcoef(kPred, kLabels), 12.0 / std::sqrt(24.0 * 22.0), 1e-12);
  EXPECT_DOUBLE_EQ(metrics::matthews_corrcoef({1, 1, 1}, {0, 1, 0}), 0.0);  // constant predictions
  EXPECT_NEAR(metrics::matthews_corrcoef({0, 1, 0, 1}, {1, 0, 1, 0}), -1.0, 1e-12);
}

TEST(Metrics, PearsonAndSpearman) {
  const std::vector<double> x = {1, 2, 3, 4, 5}, y = {2, 4, 5, 4, 5};
  EXPECT_NEAR(metrics::pearson(x, y), 6.0 / std::sqrt(60.0), 1e-12);
  // Ranks of y with ties averaged: 1, 2.5, 4.5, 2.5, 4.5.
  EXPECT_NEAR(metrics::spearman(x, y), 7.0 / std::sqrt(90.0), 1e-12);
  EXPECT_NEAR(metrics::spearman({1, 2, 3}, {10, 200, 3000}), 1.0, 1e-12);  // monotone, not linear
  EXPECT_DOUBLE_EQ(metrics::pearson({1, 1, 1}, {1, 2, 3}), 0.0);
  EXPECT_THROW(metrics::pearson({1}, {1, 2}), ConfigError);
}

TEST(Metrics, PerClassReport) {
  auto report = metrics::per_class_report(kPred, kLabels, {"a", "b", "c", "unused"});
  ASSERT_EQ(report.size(), 4u);
  EXPECT_EQ(report[0].name, "a");
  EXPECT_DOUBLE_EQ(report[0].precision, 0.5);
  EXPECT_DOUBLE_EQ(report[0].recall, 0.5);
  EXPECT_NEAR(report[1].precision, 2.0 / 3.0, 1e-12);
  EXPECT_DOUBLE_EQ(report[1].recall, 1.0);
  EXPECT_NEAR(report[1].f1, 0.8, 1e-12);
  EXPECT_NEAR(report[2].f1, 2.0 / 3.0, 1e-12);
  EXPECT_EQ(report[2].support, 2);
  EXPECT_EQ(report[3].support, 0);
  EXPECT_DOUBLE_EQ(report[3].f1, 0.0);
  const std::string table = metrics::format_report(report, 4.0 / 6.0);
  EXPECT_NE(table.find("precision"), std::string::npos);
  EXPECT_NE(table.find("macro avg"), std::string::npos);
  EXPECT_NE(table.find("0.6667"), std::string::npos) << table;
  auto j = metrics::report_json(report);
  EXPECT_EQ(j["c"]["support"], 2);
  auto m = metrics::classification_metrics(kPred, kLabels);
  EXPECT_TRUE(m.contains("accuracy") && m.contains("macro_f1") && m.contains("mcc"));
  EXPECT_TRUE(metrics::higher_is_better("accuracy"));
  EXPECT_FALSE(metrics::higher_is_better("loss"));
}
