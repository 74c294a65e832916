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

TEST(BenchCommand, TimesAUniPeltStepWithoutClaimingItsFlops) {
  const std::string shape = " --model bert-mini --batch 2 --seq 8 --steps 1 --warmup 0 --threads 1";
  auto unipelt = cli_test::run("bench --method unipelt" + shape);
  ASSERT_EQ(unipelt.code, 0) << unipelt.output;
  auto lora = cli_test::run("bench --method lora" + shape);
  ASSERT_EQ(lora.code, 0) << lora.output;
  const json u = last_json_line(unipelt.output), l = last_json_line(lora.output);
  EXPECT_EQ(u["method"], "unipelt");
  // Adapters, prefixes (with their reparameterisation MLP), LoRA and gates train besides the classifier:
  // more than LoRA alone, far from all.
  EXPECT_GT(u["trainable"].get<int64_t>(), l["trainable"].get<int64_t>()) << unipelt.output;
  EXPECT_LT(u["trainable"].get<int64_t>(), u["total"].get<int64_t>() / 4) << unipelt.output;
  EXPECT_GT(u["step_ms"].get<double>(), 0.0);
  EXPECT_TRUE(u["gflop_per_step"].is_null()) << unipelt.output;  // step_flops does not count its products
  auto both = cli_test::run("bench --method unipelt --lora-all" + shape);
  EXPECT_EQ(both.code, 2) << both.output;
  EXPECT_NE(both.output.find("--lora-all goes with --method lora"), std::string::npos) << both.output;
}

TEST(BenchCommand, KernelPeakPrintsThePeakOfEachPrecisionAndItsInstructionsCeiling) {
  for (const char* precision : {"", " --bf16"}) {
    auto r = cli_test::run(std::string("bench --kernel-peak --threads 1 --steps 1 --warmup 0") + precision);
    ASSERT_EQ(r.code, 0) << r.output;
    const json line = last_json_line(r.output);
    ASSERT_TRUE(line.contains("peak_gflops")) << r.output;
    EXPECT_GT(line["peak_gflops"].get<double>(), 0.0);
    EXPECT_TRUE(line["precision"] == "float32" || line["precision"] == "bf16") << r.output;
    // The instruction's own ceiling beside it: the kernel's multiply instruction run from registers.
    ASSERT_TRUE(line.contains("register_peak_gflops") && line.contains("instruction")) << r.output;
    const std::string instruction = line["instruction"];
    if (instruction != "none") {
      EXPECT_GT(line["register_peak_gflops"].get<double>(), 0.0) << r.output;
      EXPECT_EQ(instruction.rfind(line["precision"] == "bf16" ? "vdpbf16ps" : "vfmadd231ps", 0), 0u)
          << r.output;
    }
  }
}

}  // namespace

// The last step's tensor memory, split as the step uses it: the state at rest does not depend on
// the batch, what the forward keeps for the backward grows with it, and the peak holds both.
TEST(BenchCommand, SplitsTheStepsTensorMemory) {
  json lines[2];
  for (int i = 0; i < 2; ++i) {
    auto r = cli_test::run(
        "bench --model bert-mini --method lora --seq 64 --steps 1 --warmup 1 --threads 1 --batch " +
        std::to_string(2 * (i + 1)));
    ASSERT_EQ(r.code, 0) << r.output;
    lines[i] = last_json_line(r.output);
    ASSERT_TRUE(lines[i].contains("tensor_saved_mib")) << r.output;
    EXPECT_GT(lines[i]["tensor_rest_mib"].get<double>(), 20.0);  // bert-mini: 5.5M float32 weights
    EXPECT_GE(lines[i]["tensor_peak_mib"].get<double>(),
              lines[i]["tensor_rest_mib"].get<double>() + lines[i]["tensor_saved_mib"].get<double>() - 0.1);
  }
  EXPECT_EQ(lines[0]["tensor_rest_mib"], lines[1]["tensor_rest_mib"]);
  const double saved2 = lines[0]["tensor_saved_mib"].get<double>(),
               saved4 = lines[1]["tensor_saved_mib"].get<double>();
  EXPECT_GT(saved2, 1.0);
  EXPECT_NEAR(saved4 / saved2, 2.0, 0.2);  // activations scale with the batch

  auto frozen = cli_test::run(
      "bench --model bert-mini --method frozen --batch 2 --seq 64 --steps 1 --warmup 0 --threads 1");
  ASSERT_EQ(frozen.code, 0) << frozen.output;
  EXPECT_TRUE(last_json_line(frozen.output)["tensor_saved_mib"].is_null())
      << frozen.output;  // nothing is kept
}
