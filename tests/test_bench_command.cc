// `deltatune bench`: the step's useful work (step_flops) and achieved rate in its JSON line, and
// --kernel-peak's measured peak of the product kernel (the MFU denominator). No timing is asserted.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <sstream>

#include "cli_run.h"
#include "deltatune/step_flops.h"

namespace {
using nlohmann::json;

json last_json_line(const std::string& output) {
  std::istringstream in(output);
  std::string line, last;
  while (std::getline(in, line))
    if (!line.empty() && line[0] == '{') last = line;
  return last.empty() ? json() : json::parse(last);
}

TEST(BenchCommand, ReportsTheStepsFlopCountAndRate) {
  auto r = cli_test::run(
      "bench --model bert-mini --method lora --batch 2 --seq 8 --steps 1 --warmup 0 --threads 1");
  ASSERT_EQ(r.code, 0) << r.output;
  const json line = last_json_line(r.output);
  ASSERT_TRUE(line.contains("gflop_per_step")) << r.output;
  // bench's bert-mini shape (vocab 8192, hidden 256, 4 layers of 4 heads, FFN 1024), LoRA r=8 on q, v.
  const deltatune::ModelConfig config = deltatune::parse_model_config({{"model_type", "bert"},
                                                                       {"vocab_size", 8192},
                                                                       {"hidden_size", 256},
                                                                       {"num_hidden_layers", 4},
                                                                       {"num_attention_heads", 4},
                                                                       {"intermediate_size", 1024},
                                                                       {"max_position_embeddings", 512},
                                                                       {"num_labels", 2}},
                                                                      "bert-mini");
  const deltatune::StepShape step{.kind = deltatune::StepKind::LoraTraining,
                                  .head = deltatune::HeadKind::SequenceClassification,
                                  .batch = 2,
                                  .seq = 8,
                                  .lora_targets = {"attn.q", "attn.v"},
                                  .lora_rank = 8};
  EXPECT_NEAR(line["gflop_per_step"].get<double>(), deltatune::step_flops(config, step) * 1e-9, 1e-3);
  EXPECT_GT(line["gflops"].get<double>(), 0.0) << r.output;
}

TEST(BenchCommand, KernelPeakPrintsThePeakOfEachPrecision) {
  for (const char* precision : {"", " --bf16"}) {
    auto r = cli_test::run(std::string("bench --kernel-peak --threads 1 --steps 1 --warmup 0") + precision);
    ASSERT_EQ(r.code, 0) << r.output;
    const json line = last_json_line(r.output);
    ASSERT_TRUE(line.contains("peak_gflops")) << r.output;
    EXPECT_GT(line["peak_gflops"].get<double>(), 0.0);
    EXPECT_TRUE(line["precision"] == "float32" || line["precision"] == "bf16") << r.output;
  }
}

}  // namespace
