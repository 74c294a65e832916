// Mixed-delta batches: each row of one batch names its delta (or none), the batch runs once, and every
// row equals that row run alone through a model holding only its delta. LoRA, IA3, adapters and a
// combination, on BERT and GPT-2; saved deltas; deltas that cannot share a batch are refused.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "cli_run.h"
#include "delta_fixtures.h"
#include "deltatune/autograd.h"
#include "deltatune/delta.h"
#include "deltatune/delta_io.h"
#include "deltatune/error.h"
#include "deltatune/gates.h"
#include "deltatune/mixed_batch.h"
#include "deltatune/safetensors.h"
#include "golden.h"
#include "temp_dir.h"

using namespace deltatune;
using nlohmann::json;
using test_support::copy_into;
using test_support::logits_of;
using test_support::max_diff;
using test_support::moved_delta;
namespace fs = std::filesystem;

namespace {

// B rows of T ids; row b is padded after T - (b % 3).
ModelInput make_input(const TransformerModel& model, int64_t B, int64_t T = 9) {
  Generator gen(11);
  const int64_t V = std::min<int64_t>(model.config.vocab_size, 1000);
  std::vector<int64_t> ids;
  std::vector<float> mask;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) {
      ids.push_back(5 + int64_t(gen.below(uint64_t(V - 5))));
      mask.push_back(t < T - (b % 3) ? 1.0f : 0.0f);
    }
  ModelInput in;
  in.input_ids = Tensor::from_ints(ids, {B, T});
  in.attention_mask = Tensor::from_floats(mask, {B, T});
  return in;
}

ModelInput row(const ModelInput& in, int64_t b) {
  ModelInput r;
  r.input_ids = in.input_ids.slice(0, b, b + 1).contiguous();
  r.attention_mask = in.attention_mask.slice(0, b, b + 1).contiguous();
  return r;
}

void check_mixed(const std::string& model_name, const std::vector<std::pair<std::string, json>>& deltas,
                 const std::vector<std::string>& rows) {
  SCOPED_TRACE(model_name);
  auto model = golden::load_model(model_name);
  const ModelInput input = make_input(*model, int64_t(rows.size()));
  Tensor base;
  {
    NoGradGuard no_grad;
    base = model->forward(input).logits.contiguous();
  }
  serve::MixedBatch mixed(*model);
  std::map<std::string, std::unique_ptr<delta::Delta>> made;
  uint64_t seed = 1;
  for (auto& [name, config] : deltas) {
    auto scratch = golden::load_model(model_name);
    made[name] = moved_delta(*scratch, config, ++seed);
    mixed.add(name, delta::make_delta(made[name]->config()));
    std::map<std::string, Tensor> values;
    for (auto& [n, t] : made[name]->parameters()) values[n] = t;
    mixed.get(name).load_parameters(values);
  }
  Tensor out;
  {
    NoGradGuard no_grad;
    out = mixed.forward(input, rows).logits.contiguous();
  }
  for (size_t b = 0; b < rows.size(); ++b) {
    SCOPED_TRACE("row " + std::to_string(b) + " (" + (rows[b].empty() ? "base" : rows[b]) + ")");
    auto alone_model = golden::load_model(model_name);
    std::unique_ptr<delta::Delta> d;
    if (!rows[b].empty()) d = copy_into(*alone_model, *made[rows[b]]);
    NoGradGuard no_grad;
    const Tensor alone = alone_model->forward(row(input, int64_t(b))).logits.contiguous();
    const Tensor got = out.slice(0, int64_t(b), int64_t(b) + 1).contiguous();
    EXPECT_LT(max_diff(got, alone), 1e-4f);
    if (!rows[b].empty())
      EXPECT_GT(max_diff(got, base.slice(0, int64_t(b), int64_t(b) + 1).contiguous()), 1e-3f);
  }
  // Between batches the deltas are idle: the plain forward is the base.
  NoGradGuard no_grad;
  EXPECT_LT(max_diff(model->forward(input).logits.contiguous(), base), 1e-4f);
}

const json kLoraA = {{"method", "lora"}, {"r", 4}};
const json kLoraB = {{"method", "lora"}, {"r", 2}, {"targets", {"attn.q", "attn.v", "ffn.down"}}};
const json kIa3 = {{"method", "ia3"}};
const json kAdapter = {{"method", "adapter"}, {"variant", "houlsby"}};

}  // namespace

TEST(MixedBatch, LoraBert) {
  check_mixed("bert-mini", {{"a", kLoraA}, {"b", kLoraB}}, {"a", "", "b", "a", "b", ""});
}

TEST(MixedBatch, LoraIa3AdapterBert) {
  check_mixed("bert-mini", {{"lora", kLoraA}, {"ia3", kIa3}, {"adapter", kAdapter}},
              {"ia3", "lora", "", "adapter", "ia3", "adapter", "lora"});
}

TEST(MixedBatch, Gpt2AndCombination) {
  check_mixed("gpt2-mini",
              {{"lora", {{"method", "lora"}, {"r", 4}, {"targets", {"attn.q", "ffn.down"}}}},
               {"combo", {{"method", "combination"}, {"deltas", {kIa3, {{"method", "lora"}, {"r", 2}}}}}},
               {"parallel", {{"method", "adapter"}, {"variant", "parallel"}}}},
              {"combo", "lora", "parallel", "", "combo"});
}

TEST(MixedBatch, DiffPruningAndLora) {
  check_mixed("bert-mini",
              {{"dp", {{"method", "diff_pruning"}, {"targets", {"attn.o", "ffn.down"}}}}, {"lora", kLoraA}},
              {"dp", "", "lora", "dp"});
}

TEST(MixedBatch, EveryRowOneDeltaAndAllBase) {
  check_mixed("bert-mini", {{"a", kLoraA}}, {"a", "a", "a"});
  check_mixed("bert-mini", {{"a", kLoraA}}, {"", "", ""});
}

TEST(MixedBatch, SavedDeltas) {
  auto scratch = golden::load_model("bert-mini");
  auto a = moved_delta(*scratch, kLoraA, 5);
  fs::path dir_a = test_support::temp_dir("mixed_a");
  delta::save_delta(dir_a, *a, *scratch);
  a->detach();
  auto b = moved_delta(*scratch, kIa3, 6);
  fs::path dir_b = test_support::temp_dir("mixed_b");
  delta::save_peft(dir_b, *b, *scratch);
  b->detach();

  auto model = golden::load_model("bert-mini");
  const ModelInput input = make_input(*model, 3);
  serve::MixedBatch mixed(*model);
  mixed.add_saved("a", dir_a);
  mixed.add_saved("b", dir_b);
  EXPECT_EQ(mixed.names(), (std::vector<std::string>{"a", "b"}));
  Tensor out;
  {
    NoGradGuard no_grad;
    out = mixed.forward(input, {"b", "a", ""}).logits.contiguous();
  }
  for (auto [r, dir] : {std::pair{0, dir_b}, std::pair{1, dir_a}}) {
    auto alone = golden::load_model("bert-mini");
    auto saved = delta::load_delta(dir, *alone);
    NoGradGuard no_grad;
    EXPECT_LT(
        max_diff(out.slice(0, r, r + 1).contiguous(), alone->forward(row(input, r)).logits.contiguous()),
        1e-4f);
  }
  fs::remove_all(dir_a);
  fs::remove_all(dir_b);
}

TEST(MixedBatch, Refusals) {
  auto model = golden::load_model("bert-mini");
  const ModelInput input = make_input(*model, 2);
  Tensor base;
  {
    NoGradGuard no_grad;
    base = model->forward(input).logits.contiguous();
  }
  {
    serve::MixedBatch mixed(*model);
    mixed.add("a", delta::make_delta(kLoraA));
    for (const json& c : {json{{"method", "prefix"}}, json{{"method", "prompt"}}, json{{"method", "bitfit"}},
                          json{{"method", "unipelt"}}}) {
      try {
        mixed.add("x", delta::make_delta(c));
        ADD_FAILURE() << c.dump() << " was accepted";
      } catch (const ConfigError& e) {
        EXPECT_NE(std::string(e.what()).find("cannot share a batch"), std::string::npos) << e.what();
      }
    }
    EXPECT_THROW(mixed.add("a", delta::make_delta(kIa3)), ConfigError);  // the name is taken
    EXPECT_THROW(mixed.forward(input, {"a"}), ConfigError);              // one name per row
    EXPECT_THROW(mixed.forward(input, {"a", "nope"}), ConfigError);
    NoGradGuard no_grad;
    EXPECT_LT(max_diff(model->forward(input).logits.contiguous(), base), 1e-4f)
        << "a refused delta left hooks";
  }
  // Gone with the batch: the base again.
  NoGradGuard no_grad;
  EXPECT_LT(max_diff(model->forward(input).logits.contiguous(), base), 1e-4f);
}

// The command line: forward --mixed-delta NAME=DIR (repeated), each row naming its delta in "deltas".
TEST(MixedBatch, ForwardCommand) {
  fs::path dir = test_support::temp_dir("mixed_cli");
  auto scratch = golden::load_model("bert-mini");
  auto a = moved_delta(*scratch, kLoraA, 21);
  delta::save_delta(dir / "a", *a, *scratch);
  a->detach();
  auto b = moved_delta(*scratch, kAdapter, 22);
  delta::save_delta(dir / "b", *b, *scratch);
  b->detach();
  const ModelInput input = make_input(*scratch, 3);
  json in = {
      {"input_ids", json::array()}, {"attention_mask", json::array()}, {"deltas", {"b", nullptr, "a"}}};
  for (int64_t r = 0; r < 3; ++r) {
    in["input_ids"].push_back(row(input, r).input_ids.to_ints());
    std::vector<int64_t> m;
    for (float v : row(input, r).attention_mask.to_floats()) m.push_back(int64_t(v));
    in["attention_mask"].push_back(m);
  }
  std::ofstream(dir / "in.json") << in.dump();
  const std::string common = "forward --model " + cli_test::quote(golden::model_dir("bert-mini").string()) +
                             " --input " + cli_test::quote((dir / "in.json").string());
  auto r = cli_test::run(common + " --output " + cli_test::quote((dir / "out.safetensors").string()) +
                         " --mixed-delta a=" + cli_test::quote((dir / "a").string()) +
                         " --mixed-delta b=" + cli_test::quote((dir / "b").string()));
  ASSERT_EQ(r.code, 0) << r.output;
  const Tensor logits = read_safetensors(dir / "out.safetensors").tensors.at("logits");
  for (auto [rw, name] : {std::pair{0, "b"}, std::pair{1, ""}, std::pair{2, "a"}}) {
    auto alone = golden::load_model("bert-mini");
    std::optional<delta::SavedDelta> saved;
    if (std::string(name) != "") saved = delta::load_delta(dir / name, *alone);
    NoGradGuard no_grad;
    EXPECT_LT(max_diff(logits.slice(0, rw, rw + 1).contiguous(),
                       alone->forward(row(input, rw)).logits.contiguous()),
              1e-4f)
        << "row " << rw;
  }
  // Errors: an unknown name, a missing list, both flags, a bad spec.
  in["deltas"] = {"b", "c", nullptr};
  std::ofstream(dir / "bad.json") << in.dump();
  r = cli_test::run("forward --model " + cli_test::quote(golden::model_dir("bert-mini").string()) +
                    " --input " + cli_test::quote((dir / "bad.json").string()) +
                    " --output /dev/null --mixed-delta b=" + cli_test::quote((dir / "b").string()));
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("'c'"), std::string::npos) << r.output;
  in.erase("deltas");
  std::ofstream(dir / "nolist.json") << in.dump();
  r = cli_test::run("forward --model " + cli_test::quote(golden::model_dir("bert-mini").string()) +
                    " --input " + cli_test::quote((dir / "nolist.json").string()) +
                    " --output /dev/null --mixed-delta b=" + cli_test::quote((dir / "b").string()));
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("'deltas'"), std::string::npos) << r.output;
  r = cli_test::run(common + " --output /dev/null --mixed-delta nodir");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("NAME=DIR"), std::string::npos) << r.output;
  fs::remove_all(dir);
}

// deltatune gates: a table on stdout and the JSON file.
TEST(Gates, Command) {
  fs::path dir = test_support::temp_dir("gates_cli");
  auto model = golden::load_model("bert-mini");
  auto d = delta::make_delta({{"method", "unipelt"}, {"variant", "AP"}});
  d->attach(*model);
  delta::save_delta(dir / "delta", *d, *model);
  {
    std::ofstream data(dir / "data.jsonl");
    data << R"({"text": "a fine film", "label": "pos"})"
         << "\n"
         << R"({"text": "dull and long, a very slow story", "label": "neg"})"
         << "\n"
         << R"({"text": "great"})"
         << "\n";
  }
  auto r = cli_test::run("gates --model " + cli_test::quote(golden::model_dir("bert-mini").string()) +
                         " --delta " + cli_test::quote((dir / "delta").string()) + " --data " +
                         cli_test::quote((dir / "data.jsonl").string()) + " --batch-size 2 --dump-gates " +
                         cli_test::quote((dir / "gates.json").string()));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("adapter"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("prefix"), std::string::npos) << r.output;
  std::ifstream f(dir / "gates.json");
  const json j = json::parse(f);
  EXPECT_EQ(j["examples"], 3);
  EXPECT_EQ(j["layers"].size(), size_t(model->config.num_layers));
  EXPECT_GT(j["mean"]["adapter"].get<double>(), 0.0);
  // A delta without gates is refused with a clear message.
  auto lora = delta::make_delta(kLoraA);
  auto fresh = golden::load_model("bert-mini");
  lora->attach(*fresh);
  delta::save_delta(dir / "lora", *lora, *fresh);
  r = cli_test::run("gates --model " + cli_test::quote(golden::model_dir("bert-mini").string()) +
                    " --delta " + cli_test::quote((dir / "lora").string()) + " --data " +
                    cli_test::quote((dir / "data.jsonl").string()));
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("no gates"), std::string::npos) << r.output;
  fs::remove_all(dir);
}

TEST(MixedBatch, RemoveDetachesOneDeltaAndKeepsTheOthers) {
  auto model = golden::load_model("gpt2-mini");
  const ModelInput input = make_input(*model, 2);
  auto scratch = golden::load_model("gpt2-mini");
  auto kept = moved_delta(*scratch, kLoraA, 21);
  serve::MixedBatch mixed(*model);
  mixed.add("gone", delta::make_delta(kIa3));
  mixed.add("kept", delta::make_delta(kept->config()));
  std::map<std::string, Tensor> values;
  for (auto& [n, t] : kept->parameters()) values[n] = t;
  mixed.get("kept").load_parameters(values);
  EXPECT_TRUE(mixed.remove("gone"));
  EXPECT_FALSE(mixed.remove("gone"));
  EXPECT_EQ(mixed.names(), std::vector<std::string>{"kept"});
  EXPECT_THROW(mixed.forward(input, {"gone", ""}), ConfigError);
  Tensor out;
  {
    NoGradGuard no_grad;
    out = mixed.forward(input, {"kept", ""}).logits.contiguous();
  }
  auto alone = golden::load_model("gpt2-mini");
  auto copy = copy_into(*alone, *kept);
  NoGradGuard no_grad;
  EXPECT_LT(max_diff(out.slice(0, 0, 1).contiguous(), alone->forward(row(input, 0)).logits.contiguous()),
            1e-4f);
  auto base = golden::load_model("gpt2-mini");
  EXPECT_LT(max_diff(out.slice(0, 1, 2).contiguous(), base->forward(row(input, 1)).logits.contiguous()),
            1e-4f);
}
