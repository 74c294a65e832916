// LoRA as llama.cpp's GGUF adapter (deltatune/gguf_lora.h): PEFT's golden llama-mini adapter written
// as GGUF and read back gives PEFT's outputs; ours and PEFT's saves give the same file; the permuted
// lora_b and the shapes are llama.cpp's; what the format cannot hold is refused by name; the CLI's
// `export` and `--delta x.gguf`.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include "cli_run.h"
#include "deltatune/autograd.h"
#include "deltatune/delta_io.h"
#include "deltatune/error.h"
#include "deltatune/gguf_lora.h"
#include "deltatune/gguf_model.h"
#include "deltatune/loading.h"
#include "golden.h"
#include "model_compare.h"
#include "temp_dir.h"

using namespace deltatune;
namespace fs = std::filesystem;

namespace {

fs::path golden_adapter(const std::string& name) { return golden::dir() / "adapters" / name; }

// llama-mini with a golden PEFT adapter loaded, and that adapter written as GGUF to `file`.
LoadedModel load_and_export(const std::string& adapter, const fs::path& file) {
  LoadRequest r;
  r.model_dir = golden::model_dir("llama-mini");
  r.delta = golden_adapter(adapter);
  LoadedModel loaded = load_with_delta(r);
  gguf::write_lora_adapter(*loaded.trained.deltas.front(), *loaded.model, file);
  return loaded;
}

}  // namespace

// All seven linears of every block (q and k permuted), read back: PEFT's logits within float32
// tolerance (measured: 1.5e-5 max |logit| difference, as the PEFT folder itself gives).
TEST(GgufLora, PeftAdapterReadBackGivesPeftsOutputs) {
  const fs::path file = test_support::temp_dir("gguf_lora") / "adapter.gguf";
  load_and_export("llama-lora-all", file);
  LoadRequest r;
  r.model_dir = golden::model_dir("llama-mini");
  r.delta = file;
  LoadedModel loaded = load_with_delta(r);
  ASSERT_EQ(loaded.trained.deltas.size(), 1u);
  EXPECT_EQ(loaded.trained.method, "lora");
  const TensorFile expected = golden::outputs("llama-lora-all");
  NoGradGuard no_grad;
  const golden::Comparison cmp = golden::compare(loaded.model->forward(golden::input_of(expected)), expected);
  EXPECT_GT(cmp.positions, 0);
  EXPECT_LT(cmp.max_logits, 1e-4);
  EXPECT_LT(cmp.max_lse, 1e-4);
  EXPECT_EQ(cmp.argmax_mismatch, 0);
}

TEST(GgufLora, FileHasLlamaCppsKeysNamesAndShapes) {
  const fs::path file = test_support::temp_dir("gguf_lora_meta") / "adapter.gguf";
  load_and_export("llama-lora-all", file);
  const gguf::File f = gguf::read_file(file);
  EXPECT_EQ(f.string("general.architecture"), "llama");
  EXPECT_EQ(f.string("general.type"), "adapter");
  EXPECT_EQ(f.string("adapter.type"), "lora");
  EXPECT_EQ(f.number("adapter.lora.alpha"), 32.0);  // PEFT's lora_alpha: llama.cpp scales by alpha / r
  EXPECT_EQ(f.tensors.size(), 4u * 7u * 2u);
  const gguf::TensorInfo& a = f.tensor("blk.0.attn_k.weight.lora_a");
  const gguf::TensorInfo& b = f.tensor("blk.0.attn_k.weight.lora_b");
  EXPECT_EQ(a.dims, (std::vector<int64_t>{256, 8}));  // ne[0] = the base weight's in features
  EXPECT_EQ(b.dims, (std::vector<int64_t>{8, 128}));  // ne[1] = its out features
  // lora_b's rows are permuted as blk.0.attn_k's: file row 1 of head 0 is PEFT's row 32.
  const TensorFile peft = read_safetensors(golden_adapter("llama-lora-all") / "adapter_model.safetensors");
  const std::vector<float> peft_b =
      peft.tensors.at("base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight").to_floats();
  const std::vector<float> file_b = gguf::dequantize(b);
  for (int64_t c = 0; c < 8; ++c) {
    EXPECT_EQ(file_b[size_t(8 + c)], peft_b[size_t(32 * 8 + c)]);
    EXPECT_EQ(file_b[size_t(c)], peft_b[size_t(c)]);
  }
}

TEST(GgufLora, WhatTheFormatCannotHoldIsRefusedByName) {
  const fs::path dir = test_support::temp_dir("gguf_lora_bad");
  try {
    load_and_export("llama-dora", dir / "dora.gguf");
    FAIL() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("DoRA"), std::string::npos) << e.what();
  }
  LoadRequest r;
  r.model_dir = golden::model_dir("llama-mini");
  r.delta = golden_adapter("llama-ia3");
  LoadedModel ia3 = load_with_delta(r);
  EXPECT_THROW(gguf::write_lora_adapter(*ia3.trained.deltas.front(), *ia3.model, dir / "ia3.gguf"),
               ConfigError);

  // An adapter for llama refused by a GPT-2 model; a model file is no adapter.
  load_and_export("llama-lora-qv", dir / "qv.gguf");
  auto gpt2 = golden::load_model("gpt2-mini");
  try {
    gguf::attach_lora_adapter(dir / "qv.gguf", *gpt2);
    FAIL() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("llama family"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(gguf::is_gguf_adapter(dir / "qv.gguf"));
  gguf::convert_model(golden::model_dir("llama-mini"), dir / "model.gguf", gguf::GgmlType::F16);
  EXPECT_FALSE(gguf::is_gguf_adapter(dir / "model.gguf"));
}

// `deltatune export` on ours and on PEFT's save of one trained LoRA gives one file; generating with
// `--delta adapter.gguf` gives what `--delta` on the folder gives.
TEST(GgufLora, CommandLineExportAndReadBack) {
  const fs::path dir = test_support::temp_dir("gguf_lora_cli");
  const std::string model = cli_test::quote(golden::model_dir("llama-mini").string());
  std::ofstream(dir / "lm.jsonl") << "{\"text\": \"The whale swam in the deep sea.\"}\n"
                                     "{\"text\": \"A dictionary defines words.\"}\n";
  auto train = cli_test::run(
      "train --model " + model + " --data " + cli_test::quote((dir / "lm.jsonl").string()) +
      " --task causal-lm --method lora --max-steps 3 --batch-size 2 --lr 0.05 --threads 2 --out " +
      cli_test::quote((dir / "run").string()));
  ASSERT_EQ(train.code, 0) << train.output;
  for (const char* saved : {"delta", "peft"}) {
    auto out = cli_test::run("export --format gguf --model " + model + " --delta " +
                             cli_test::quote((dir / "run" / saved).string()) + " --output " +
                             cli_test::quote((dir / (std::string(saved) + ".gguf")).string()));
    ASSERT_EQ(out.code, 0) << out.output;
  }
  std::ifstream ours(dir / "delta.gguf", std::ios::binary), peft(dir / "peft.gguf", std::ios::binary);
  EXPECT_EQ(std::string(std::istreambuf_iterator<char>(ours), {}),
            std::string(std::istreambuf_iterator<char>(peft), {}));

  const std::string generate =
      "generate --model " + model + " --prompt 'The whale' --max-new-tokens 8 --threads 2 --delta ";
  auto from_folder = cli_test::run(generate + cli_test::quote((dir / "run" / "delta").string()));
  auto from_gguf = cli_test::run(generate + cli_test::quote((dir / "delta.gguf").string()));
  ASSERT_EQ(from_folder.code, 0) << from_folder.output;
  ASSERT_EQ(from_gguf.code, 0) << from_gguf.output;
  EXPECT_EQ(from_folder.output.substr(0, from_folder.output.find("generated")),
            from_gguf.output.substr(0, from_gguf.output.find("generated")));

  auto bad = cli_test::run("export --format onnx --model " + model + " --delta x --output y.gguf");
  EXPECT_EQ(bad.code, 2);
  EXPECT_NE(bad.output.find("--format 'onnx' is not supported (gguf)"), std::string::npos) << bad.output;
}

// merge writes GGUF: PEFT's golden adapter merged into llama-mini gives PEFT's logits read back; on a
// Q8_0 GGUF base the blocks are dequantised first, so the merged file computes what the quantised
// base with the adapter attached does.
TEST(GgufLora, MergedModelWrittenAsGguf) {
  const fs::path dir = test_support::temp_dir("gguf_merge");
  const std::string model = cli_test::quote(golden::model_dir("llama-mini").string());
  const std::string adapter = cli_test::quote(golden_adapter("llama-lora-all").string());
  auto merged = cli_test::run("merge --model " + model + " --delta " + adapter + " --out " +
                              cli_test::quote((dir / "merged.gguf").string()) + " --type f32");
  ASSERT_EQ(merged.code, 0) << merged.output;
  LoadOptions options;
  options.verbose = false;
  auto from_file = load_pretrained(dir / "merged.gguf", options);
  const TensorFile expected = golden::outputs("llama-lora-all");
  NoGradGuard no_grad;
  const golden::Comparison cmp = golden::compare(from_file->forward(golden::input_of(expected)), expected);
  EXPECT_GT(cmp.positions, 0);
  EXPECT_LT(cmp.max_logits, 1e-4);

  gguf::convert_model(golden::model_dir("llama-mini"), dir / "q8.gguf", gguf::GgmlType::Q8_0);
  auto on_q8 =
      cli_test::run("merge --model " + cli_test::quote((dir / "q8.gguf").string()) + " --delta " + adapter +
                    " --format gguf --type f32 --out " + cli_test::quote((dir / "q8-merged").string()));
  ASSERT_EQ(on_q8.code, 0) << on_q8.output;
  LoadRequest r;
  r.model_dir = dir / "q8.gguf";
  r.delta = golden_adapter("llama-lora-all");
  LoadedModel attached = load_with_delta(r);
  auto merged_q8 = load_pretrained(dir / "q8-merged", options);
  const std::vector<float> want = attached.model->forward(golden::input_of(expected)).logits.to_floats();
  const std::vector<float> got = merged_q8->forward(golden::input_of(expected)).logits.to_floats();
  ASSERT_EQ(got.size(), want.size());
  float worst = 0;
  for (size_t i = 0; i < got.size(); ++i) worst = std::max(worst, std::fabs(got[i] - want[i]));
  EXPECT_LT(worst, 1e-3f);

  auto clash = cli_test::run("merge --model " + model + " --delta " + adapter + " --out " +
                             cli_test::quote((dir / "merged.gguf").string()));
  EXPECT_EQ(clash.code, 2);
  EXPECT_NE(clash.output.find("exists; pass --overwrite"), std::string::npos) << clash.output;
}
