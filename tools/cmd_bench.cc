// deltatune bench --model SHAPE --method lora|unipelt|full|frozen [--lora-all] --batch B --seq T --threads N
//                 --steps S --warmup W [--bf16] [--quantize nf4|nf4-dq|int8|q8_0|q4_0]
//                 [--gradient-checkpointing]
// The training step of ../shared/peers/torch_peer.py on our engine: a random-initialised model of a
// real architecture's shape (built from a synthetic Hugging Face config, so it runs our model code),
// LoRA r=8 alpha=16 on the attention query/value projections (every block linear with --lora-all;
// "unipelt": adapter, prefix and LoRA, gated, with UniPELT's defaults), AdamW, cross-entropy on a fixed
// random batch; "frozen" runs the forward and loss without recording.
// Prints one JSON line with the peer's fields so the two can be compared side by side. --bf16 runs
// the products in bfloat16 (as `train --bf16`); the line's "precision" says which ran, "quantize"
// the frozen base's format (`train --quantize`), "gflop_per_step" the step's useful work
// (step_flops.h) and "gflops" the rate achieved on it (every process's, as tokens_per_s).
//   deltatune bench --kernel-peak [--bf16] --threads N [--steps S --warmup W]
// times the product kernel alone instead (kernel_peak.h) and prints its "peak_gflops": MFU is a
// step's gflops over that.
#include <malloc.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "command.h"
#include "deltatune/autograd.h"
#include "deltatune/delta.h"
#include "deltatune/distributed.h"
#include "deltatune/loading.h"
#include "deltatune/memory_stats.h"
#include "deltatune/model.h"
#include "deltatune/optim.h"
#include "deltatune/step_flops.h"
#include "deltatune/threads.h"
#include "kernel_peak.h"
#include "model_loading.h"
#include "train/replicas.h"

extern "C" char* openblas_get_corename(void);

namespace {
using deltatune::Tensor;
using deltatune::cli::ExitError;
using nlohmann::json;

// The peer's SHAPES: name -> (arch, vocab, hidden, layers, heads, kv_heads, ffn, max_pos).
struct BenchShape {
  const char* arch;
  int64_t vocab, hidden, layers, heads, kv_heads, ffn, max_pos;
};
const std::map<std::string, BenchShape>& shapes() {
  static const std::map<std::string, BenchShape> s = {
      {"bert-base", {"bert", 30522, 768, 12, 12, 12, 3072, 512}},
      {"gpt2-124m", {"gpt2", 50257, 768, 12, 12, 12, 3072, 1024}},
      {"llama-160m", {"llama", 32000, 768, 12, 12, 4, 2048, 2048}},
      {"bert-mini", {"bert", 8192, 256, 4, 4, 4, 1024, 512}},
      {"gpt2-mini", {"gpt2", 8192, 256, 4, 4, 4, 1024, 512}},
      {"llama-mini", {"llama", 8000, 256, 4, 4, 2, 704, 1024}},
  };
  return s;
}

// A Hugging Face config.json for the shape, dropout off (the peer has none).
json hf_config(const BenchShape& s) {
  const std::string arch = s.arch;
  if (arch == "bert")
    return {{"model_type", "bert"},          {"architectures", {"BertForSequenceClassification"}},
            {"vocab_size", s.vocab},         {"hidden_size", s.hidden},
            {"num_hidden_layers", s.layers}, {"num_attention_heads", s.heads},
            {"intermediate_size", s.ffn},    {"max_position_embeddings", s.max_pos},
            {"hidden_act", "gelu"},          {"type_vocab_size", 1},
            {"layer_norm_eps", 1e-5},        {"num_labels", 2},
            {"hidden_dropout_prob", 0.0},    {"attention_probs_dropout_prob", 0.0}};
  if (arch == "gpt2")
    return {{"model_type", "gpt2"},
            {"architectures", {"GPT2LMHeadModel"}},
            {"vocab_size", s.vocab},
            {"n_embd", s.hidden},
            {"n_layer", s.layers},
            {"n_head", s.heads},
            {"n_inner", s.ffn},
            {"n_positions", s.max_pos},
            {"activation_function", "gelu_new"},
            {"resid_pdrop", 0.0},
            {"embd_pdrop", 0.0},
            {"attn_pdrop", 0.0},
            {"layer_norm_epsilon", 1e-5}};
  return {{"model_type", "llama"},
          {"architectures", {"LlamaForCausalLM"}},
          {"vocab_size", s.vocab},
          {"hidden_size", s.hidden},
          {"num_hidden_layers", s.layers},
          {"num_attention_heads", s.heads},
          {"num_key_value_heads", s.kv_heads},
          {"intermediate_size", s.ffn},
          {"max_position_embeddings", s.max_pos},
          {"hidden_act", "silu"},
          {"rms_norm_eps", 1e-5},
          {"tie_word_embeddings", false}};
}

double peak_rss_mib() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return double(u.ru_maxrss) / 1024.0;
}

struct Options {
  std::string model = "bert-base", method = "lora";
  bool lora_all = false;
  int64_t batch = 8, seq = 128, steps = 10, warmup = 3;
  int threads = 2;
  bool bf16 = false;
  bool kernel_peak = false;
  bool gradient_checkpointing = false;
  std::optional<deltatune::QuantFormat> quantize;
};

void run(const Options& o) {
  using namespace deltatune;
  auto it = shapes().find(o.model);
  if (it == shapes().end()) {
    std::string names;
    for (auto& [n, _] : shapes()) names += (names.empty() ? "" : ", ") + n;
    throw ExitError{"bench: unknown model shape '" + o.model + "' (known: " + names + ")"};
  }
  if (o.method != "lora" && o.method != "unipelt" && o.method != "full" && o.method != "frozen")
    throw ExitError{"bench: --method must be lora, unipelt, full or frozen, got '" + o.method + "'"};
  if (o.lora_all && o.method != "lora") throw ExitError{"bench: --lora-all goes with --method lora"};
  if (o.batch < 1 || o.seq < 2 || o.steps < 1 || o.warmup < 0 || o.threads < 1)
    throw ExitError{"bench: --batch, --steps, --threads must be >= 1, --seq >= 2, --warmup >= 0"};
  const BenchShape& s = it->second;
  if (o.seq > s.max_pos) throw ExitError{"bench: --seq exceeds the shape's max positions"};
  set_num_threads(int(o.threads));
  if (o.kernel_peak) {
    std::printf("%s\n",
                cli::measure_kernel_peak(o.bf16, o.threads, int(o.warmup), int(o.steps)).dump().c_str());
    return;
  }

  ModelConfig config = parse_model_config(hf_config(s), "bench:" + o.model);
  const bool is_bert = std::string(s.arch) == "bert";
  // --quantize: the body's weights quantised one by one as they are made (no float32 model at once),
  // as train quantises them while the checkpoint is read; a full run trains them, so they stay float.
  // --bf16 likewise stores them in bfloat16 as they are made, as train --bf16 does while reading.
  const std::optional<QuantFormat> quantize_as_built = o.method == "full" ? std::nullopt : o.quantize;
  const bool bf16_as_built = o.method != "full" && o.bf16 && ops::bf16_linear_available();
  std::unique_ptr<TransformerModel> model =
      build_model(config, is_bert ? HeadKind::SequenceClassification : HeadKind::CausalLM, 0,
                  quantize_as_built, bf16_as_built);
  model->set_training(o.method != "frozen");

  std::unique_ptr<delta::Delta> attached;  // LoRA or UniPELT
  NamedParams params;
  int64_t trainable = 0, total = 0;
  if (o.method == "lora" || o.method == "unipelt") {
    json targets = o.lora_all ? json{"attn.q", "attn.k", "attn.v", "attn.o", "ffn.up", "ffn.gate", "ffn.down"}
                              : json{"attn.q", "attn.v"};
    // UniPELT: adapter, prefix and LoRA, each gated, with the method's own defaults (the paper's).
    attached = delta::make_delta(
        o.method == "unipelt" ? json{{"method", "unipelt"}, {"variant", "APL"}}
                              : json{{"method", "lora"}, {"r", 8}, {"alpha", 16}, {"targets", targets}});
    attached->attach(*model);
    // As the peer: BERT trains its 2-way classifier besides the delta; the pooler stays frozen.
    std::vector<std::string> keep;
    if (is_bert) keep = {"classifier.weight", "classifier.bias"};
    std::tie(trainable, total) = delta::freeze_for_delta(*model, {attached.get()}, keep);
    params = delta::trainable_parameters(*model, {attached.get()});
  } else {
    std::set<const TensorImpl*> seen;  // tied weights count once
    for (auto& [name, t] : model->named_parameters()) {
      t->set_requires_grad(o.method == "full");
      if (!seen.insert(t->impl()).second) continue;
      total += t->numel();
      if (o.method == "full") {
        trainable += t->numel();
        params.emplace_back(name, *t);
      }
    }
  }
  // --quantize and --bf16 as train's (use_bf16: float32 where the CPU lacks AVX-512 BF16).
  if (o.bf16 || o.quantize) {
    use_precision(*model, o.bf16, o.quantize);
    malloc_trim(0);  // the float32 weights' pages go back: only what is used counts
  }
  model->gradient_checkpointing = o.gradient_checkpointing;

  std::unique_ptr<AdamW> opt;
  if (!params.empty()) opt = std::make_unique<AdamW>(params, AdamWOptions{.lr = 1e-4});

  // A fixed random batch.
  Generator gen(0);
  std::vector<int64_t> ids(size_t(o.batch * o.seq)), labels(size_t(o.batch));
  for (auto& v : ids) v = int64_t(gen.below(uint64_t(s.vocab)));
  for (auto& v : labels) v = int64_t(gen.below(2));
  ModelInput input;
  input.input_ids = Tensor::from_ints(ids, {o.batch, o.seq});
  const Tensor label_tensor = Tensor::from_ints(labels, {o.batch});
  std::vector<int64_t> next(size_t(o.batch * (o.seq - 1)));
  for (int64_t b = 0; b < o.batch; ++b)
    for (int64_t t = 0; t + 1 < o.seq; ++t)
      next[size_t(b * (o.seq - 1) + t)] = ids[size_t(b * o.seq + t + 1)];
  const Tensor next_tokens = Tensor::from_ints(next, {o.batch * (o.seq - 1)});

  // The causal LM's head and loss run fused and chunked (ops::linear_cross_entropy): the same value
  // as cross-entropy over the [B, T-1, V] logits the peer materialises.
  // A quantised head has no float weight to fuse: its logits are computed (and held) as the peer's.
  Tensor head_weight;
  if (!is_bert) {
    Tensor* w = model->find_parameter("lm_head.weight");
    auto* head = dynamic_cast<nn::Linear*>(model->find_module("lm_head"));
    if (!(head && head->quantized)) head_weight = w ? *w : model->input_embeddings();
  }
  input.compute_logits = is_bert || !head_weight.defined();
  auto loss_of = [&]() {
    ModelOutput out = model->forward(input);
    if (is_bert) return ops::cross_entropy(out.logits, label_tensor);
    if (!head_weight.defined())
      return ops::cross_entropy(ops::reshape(out.logits.slice(1, 0, o.seq - 1), {-1, out.logits.size(-1)}),
                                next_tokens);
    const Tensor& hidden = out.last_hidden_state;
    return ops::linear_cross_entropy(ops::reshape(hidden.slice(1, 0, o.seq - 1), {-1, hidden.size(-1)}),
                                     head_weight, next_tokens);
  };

  // Under mpirun: every process runs the step on its own batch and the gradients are all-reduced as
  // the trainer does (src/train/replicas.h), timed apart.
  const std::shared_ptr<distributed::Communicator> job = distributed::world();
  std::vector<double> times, comm_times, wait_times;
  int64_t comm_bytes = 0;
  // The last step's tensor memory (memory_stats.h), split as a step uses it: the state at rest
  // (weights, optimizer moments), what the forward keeps for the backward, and the peak on top.
  size_t at_rest = 0, saved_for_backward = 0;
  for (int64_t step = 0; step < o.warmup + o.steps; ++step) {
    const bool last = step + 1 == o.warmup + o.steps;
    if (last) {
      at_rest = tensor_memory().live_bytes;
      reset_tensor_memory_peak();
    }
    const auto t0 = std::chrono::steady_clock::now();
    if (o.method == "frozen") {
      NoGradGuard no_grad;
      (void)loss_of().item();
    } else {
      Tensor loss = loss_of();
      if (last) saved_for_backward = tensor_memory().live_bytes - at_rest;
      loss.backward();
      // A barrier first (bench only; the trainer has none), so the all-reduce's time is the transfer
      // and the time one process waits for the slower one is reported apart.
      const auto w0 = std::chrono::steady_clock::now();
      if (job->size() > 1) job->barrier();
      const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - w0).count();
      const train_detail::AllreduceCost cost = train_detail::allreduce_gradients(params, *job);
      if (step >= o.warmup) {
        comm_times.push_back(cost.seconds);
        wait_times.push_back(waited);
      }
      comm_bytes = cost.bytes;
      opt->step();
      opt->zero_grad();
    }
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (step >= o.warmup) times.push_back(dt);
  }
  auto median = [](std::vector<double> v) {
    if (v.empty()) return 0.0;
    std::sort(v.begin(), v.end());
    const size_t n = v.size();
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
  };
  const double med = median(times);
  // The step's useful work (step_flops.h: the products of the forward and, training, of the backward's
  // needed gradients) and the rate achieved on it.
  StepShape step{.kind = o.method == "frozen" ? StepKind::Forward
                         : o.method == "full" ? StepKind::FullTraining
                                              : StepKind::LoraTraining,
                 .head = is_bert ? HeadKind::SequenceClassification : HeadKind::CausalLM,
                 .batch = o.batch,
                 .seq = o.seq,
                 .lora_targets = {},
                 .lora_rank = 8};
  if (o.method == "lora")
    step.lora_targets = o.lora_all ? std::vector<std::string>{"attn.q", "attn.k",   "attn.v",  "attn.o",
                                                              "ffn.up", "ffn.gate", "ffn.down"}
                                   : std::vector<std::string>{"attn.q", "attn.v"};
  // UniPELT's adapter, prefix and gate products are not in step_flops: no FLOP figures for it.
  const double gflop = o.method == "unipelt" ? 0.0 : step_flops(config, step) * 1e-9;
  auto round1 = [](double v) { return double(int64_t(v * 10.0 + 0.5)) / 10.0; };
  auto mib = [](size_t bytes) { return double(bytes) / double(1 << 20); };
  json line = {{"engine", "deltatune"},
               {"model", o.model},
               {"method", o.method + (o.lora_all ? "-all" : "")},
               {"batch", o.batch},
               {"seq", o.seq},
               {"threads", o.threads},
               {"step_ms", round1(med * 1e3)},
               {"tokens_per_s", round1(double(o.batch * o.seq * job->size()) / med)},
               {"gflop_per_step", gflop > 0 ? json(double(int64_t(gflop * 1000.0 + 0.5)) / 1000.0) : json()},
               {"gflops", gflop > 0 ? json(round1(gflop * double(job->size()) / med)) : json()},
               {"peak_rss_mib", round1(peak_rss_mib())},
               {"tensor_rest_mib", round1(mib(at_rest))},
               {"tensor_saved_mib", o.method == "frozen" ? json() : json(round1(mib(saved_for_backward)))},
               {"tensor_peak_mib", round1(mib(tensor_memory().peak_bytes))},
               {"trainable", trainable},
               {"total", total},
               {"blas_core", openblas_get_corename()},
               {"precision", ops::matmul_precision() == ops::MatmulPrecision::Bf16 ? "bf16" : "float32"},
               {"quantize", o.quantize ? quant_format_name(*o.quantize) : "none"}};
  if (o.gradient_checkpointing) line["gradient_checkpointing"] = true;
  if (job->size() > 1) {  // batch is per process; tokens_per_s counts every process's
    line["processes"] = job->size();
    line["allreduce_bytes"] = comm_bytes;
    line["allreduce_ms"] = round1(median(comm_times) * 1e3);
    line["wait_ms"] = round1(median(wait_times) * 1e3);
  }
  if (job->rank() != 0) return;
  std::printf("%s\n", line.dump().c_str());
  std::fflush(stdout);
}

void setup(CLI::App& app) {
  auto o = std::make_shared<Options>();
  std::vector<std::string> names;
  for (auto& [n, _] : shapes()) names.push_back(n);
  app.add_option("--model", o->model, "Model shape")->check(CLI::IsMember(names));
  app.add_option("--method", o->method,
                 "lora, unipelt (adapter + prefix + LoRA, gated; its default config; no FLOP figures), full "
                 "or frozen (forward only)")
      ->check(CLI::IsMember({"lora", "unipelt", "full", "frozen"}));
  deltatune::cli::add_quantize_option(app, o->quantize);
  app.add_flag("--bf16", o->bf16,
               "Products in bfloat16 on the AVX-512 BF16 kernel, frozen weights stored in bfloat16 (as train "
               "--bf16; float32 on CPUs without it)");
  app.add_flag("--lora-all", o->lora_all,
               "LoRA on every linear layer of the blocks (default: query and value)");
  app.add_flag("--gradient-checkpointing", o->gradient_checkpointing,
               "Recompute each block in the backward instead of keeping its activations (as train's); "
               "the JSON line says so");
  app.add_option("--batch", o->batch, "Batch size");
  app.add_option("--seq", o->seq, "Sequence length");
  deltatune::cli::add_threads_option(app, &o->threads, "CPU threads (default: 2, as the PyTorch peer's)");
  app.add_flag("--kernel-peak", o->kernel_peak,
               "Time the product kernel alone (the float32 kernel the steps use: ours on AVX-512, else "
               "OpenBLAS sgemm; or the bf16 kernel with --bf16) on a large "
               "shape and print its peak_gflops (the MFU denominator) instead of a step");
  app.add_option("--steps", o->steps, "Timed steps (the median is reported)");
  app.add_option("--warmup", o->warmup, "Untimed steps first");
  app.callback([o] { run(*o); });
}

deltatune::cli::Register reg("bench", "Time a training step on a model shape (the PyTorch peer's benchmark)",
                             setup);
}  // namespace
