// Concurrent forwards: several threads run one model on different inputs at once, and every result
// equals, bit for bit, the same call made alone. What a call changes lives in its ForwardContext
// (dropout generator, a mixed batch's rows, hooks' per-call values) or its own KV cache, so calls
// share nothing they write: training-mode dropout with per-call seeds on BERT (LoRA and a parallel
// adapter), mixed LoRA batches on GPT-2, UniPELT (gates, prefix, adapter, LoRA) with a KV cache on Llama.
#include <gtest/gtest.h>
#include <omp.h>

#include <cstring>
#include <exception>
#include <functional>
#include <latch>
#include <thread>

#include "deltatune/autograd.h"
#include "deltatune/delta.h"
#include "deltatune/forward_context.h"
#include "deltatune/mixed_batch.h"
#include "deltatune/threads.h"
#include "golden.h"

using namespace deltatune;
using nlohmann::json;

namespace {

constexpr int kThreads = 4;
constexpr int kCalls = 16;

struct Call {
  ModelInput input;
  uint64_t seed = 0;
  std::vector<std::string> deltas;  // mixed batches: each row's delta
};

// Right-padded random ids; batch and length vary by call, so calls that leaked state into each other
// would also disagree on shapes.
ModelInput random_input(const TransformerModel& model, Generator& gen) {
  const int64_t B = 1 + int64_t(gen.below(4)), T = 5 + int64_t(gen.below(8));
  const int64_t V = std::min<int64_t>(model.config.vocab_size, 1000);
  std::vector<int64_t> ids;
  std::vector<float> mask;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t pad = int64_t(gen.below(3));
    for (int64_t t = 0; t < T; ++t) {
      ids.push_back(5 + int64_t(gen.below(uint64_t(V - 5))));
      mask.push_back(t < T - pad ? 1.0f : 0.0f);
    }
  }
  ModelInput in;
  in.input_ids = Tensor::from_ints(ids, {B, T});
  in.attention_mask = Tensor::from_floats(mask, {B, T});
  return in;
}

std::vector<Call> random_calls(const TransformerModel& model,
                               const std::vector<std::string>& delta_names = {}) {
  Generator gen(2024);
  std::vector<Call> calls;
  for (int i = 0; i < kCalls; ++i) {
    Call c;
    c.input = random_input(model, gen);
    c.seed = 1000 + uint64_t(i);
    if (!delta_names.empty())
      for (int64_t b = 0; b < c.input.input_ids.size(0); ++b)
        c.deltas.push_back(delta_names[gen.below(delta_names.size())]);
    calls.push_back(c);
  }
  // The same input twice with different seeds: dropout must be live for the test to mean anything.
  calls[1].input = calls[0].input;
  calls[1].deltas = calls[0].deltas;
  return calls;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// Runs every call alone, in order, then all of them spread over kThreads threads started together,
// and expects the same bits from each. Returns the results.
std::vector<std::vector<float>> expect_concurrent_equals_alone(
    const std::vector<Call>& calls, const std::function<Tensor(const Call&)>& run) {
  std::vector<std::vector<float>> alone;
  for (const Call& c : calls) alone.push_back(run(c).to_floats());

  std::vector<std::vector<float>> together(calls.size());
  std::vector<std::exception_ptr> failures(kThreads);
  std::latch start(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      start.arrive_and_wait();
      try {
        for (size_t i = size_t(t); i < calls.size(); i += kThreads) together[i] = run(calls[i]).to_floats();
      } catch (...) {
        failures[size_t(t)] = std::current_exception();
      }
    });
  for (auto& th : threads) th.join();
  for (auto& f : failures)
    if (f) try {
        std::rethrow_exception(f);
      } catch (const std::exception& e) {
        ADD_FAILURE() << "a concurrent call threw: " << e.what();
      }
  int differing = 0;
  for (size_t i = 0; i < calls.size(); ++i) differing += !same_bits(alone[i], together[i]);
  EXPECT_EQ(differing, 0) << "of " << calls.size()
                          << " calls, run concurrently, differ from the same call alone";
  return alone;
}

// Parameters a little away from their initialisation (LoRA's B starts at zero), so every delta
// changes the output.
void randomise(delta::Delta& d, uint64_t seed) {
  NoGradGuard no_grad;
  Generator gen(seed);
  std::map<std::string, Tensor> values;
  for (auto& [n, t] : d.parameters())
    values[n] = ops::add(t, Tensor::randn(t.shape(), gen, 0.05f)).contiguous();
  d.load_parameters(values);
}

Tensor run_with_seed(TransformerModel& model, const Call& c) {
  ForwardContext call(c.seed);
  ModelInput in = c.input;
  in.context = &call;
  if (c.seed % 2) {  // half the calls record a tape: grad mode is per thread
    NoGradGuard no_grad;
    return model.forward(in).logits;
  }
  return model.forward(in).logits.detach();
}

// The calls themselves are the parallelism: one OpenMP thread each keeps the test quick.
class ConcurrentCalls : public ::testing::Test {
  void SetUp() override { set_num_threads(1); }
};

TEST_F(ConcurrentCalls, TrainingDropoutDrawsFromEachCallsOwnGenerator) {
  auto model = golden::load_model("bert-mini");
  model->config.hidden_dropout = 0.1;
  auto lora =
      delta::make_delta({{"method", "lora"}, {"r", 4}, {"dropout", 0.2}, {"targets", {"attn.q", "attn.v"}}});
  lora->attach(*model);
  randomise(*lora, 1);
  auto adapter = delta::make_delta({{"method", "adapter"}, {"variant", "parallel"}, {"dropout", 0.2}});
  adapter->attach(*model);
  randomise(*adapter, 2);
  model->set_training(true);

  const std::vector<Call> calls = random_calls(*model);
  auto alone = expect_concurrent_equals_alone(calls, [&](const Call& c) { return run_with_seed(*model, c); });
  EXPECT_FALSE(same_bits(alone[0], alone[1])) << "different seeds, same input: dropout is not live";
  // Seeded calls repeat exactly, whatever ran in between.
  EXPECT_TRUE(same_bits(run_with_seed(*model, calls[0]).to_floats(), alone[0]));
}

TEST_F(ConcurrentCalls, MixedBatchRowsBelongToTheCall) {
  auto model = golden::load_model("gpt2-mini");
  model->config.hidden_dropout = 0.1;
  serve::MixedBatch mixed(*model);
  const std::vector<std::string> names{"", "a", "b", "c", "p"};
  for (size_t i = 1; i < 4; ++i) {
    mixed.add(names[i], delta::make_delta({{"method", "lora"}, {"r", 2 + int(i)}, {"dropout", 0.1}}));
    randomise(mixed.get(names[i]), 10 + i);
  }
  mixed.add("p", delta::make_delta({{"method", "adapter"}, {"variant", "parallel"}}));
  randomise(mixed.get("p"), 20);
  model->set_training(true);

  const std::vector<Call> calls = random_calls(*model, names);
  auto run = [&](const Call& c) {
    NoGradGuard no_grad;
    ForwardContext call(c.seed);
    ModelInput in = c.input;
    in.context = &call;
    return mixed.forward(in, c.deltas).logits;
  };
  auto alone = expect_concurrent_equals_alone(calls, run);
  EXPECT_FALSE(same_bits(alone[0], alone[1]));
  // Between calls the deltas are idle: a plain forward is the base.
  model->set_training(false);
  NoGradGuard no_grad;
  ModelInput first = calls[2].input;
  const std::vector<float> plain = model->forward(first).logits.to_floats();
  EXPECT_TRUE(
      same_bits(plain, mixed.forward(first, std::vector<std::string>(size_t(first.input_ids.size(0)), ""))
                           .logits.to_floats()));
}

TEST_F(ConcurrentCalls, UnipeltWithKvCacheKeepsPerCallState) {
  auto model = golden::load_model("llama-mini");
  auto d = delta::make_delta(
      {{"method", "unipelt"}, {"variant", "APL"}, {"lora", {{"dropout", 0.1}}}, {"seed", 3}});
  d->attach(*model);
  randomise(*d, 4);
  model->set_training(true);

  const std::vector<Call> calls = random_calls(*model);
  // All positions but the last, then the last through the call's own cache.
  auto run = [&](const Call& c) {
    NoGradGuard no_grad;
    ForwardContext call(c.seed);
    KVCache cache;
    const int64_t T = c.input.input_ids.size(1);
    ModelInput head, last;
    head.input_ids = c.input.input_ids.slice(1, 0, T - 1).contiguous();
    last.input_ids = c.input.input_ids.slice(1, T - 1, T).contiguous();
    for (ModelInput* in : {&head, &last}) in->cache = &cache, in->context = &call;
    model->forward(head);
    return model->forward(last).logits;
  };
  auto alone = expect_concurrent_equals_alone(calls, run);
  EXPECT_FALSE(same_bits(alone[0], alone[1]));
}

TEST(ConcurrentForward, GradModeIsPerThread) {
  std::latch guarded(1), checked(1);
  std::thread other([&] {
    NoGradGuard no_grad;
    guarded.count_down();
    checked.wait();
  });
  guarded.wait();
  EXPECT_TRUE(grad_enabled()) << "another thread's NoGradGuard reached this one";
  checked.count_down();
  other.join();
}

// OpenMP keeps a thread count per thread: a request thread's forward runs on the library's count,
// not OpenMP's default.
TEST(ConcurrentForward, RequestThreadsUseTheLibrarysThreadCount) {
  auto model = golden::load_model("bert-mini");
  int openmp_default = 0;
  std::thread([&] { openmp_default = omp_get_max_threads(); }).join();
  const int wanted = openmp_default + 1;
  set_num_threads(wanted);
  int seen = 0;
  std::thread request([&] {
    Generator gen(6);
    NoGradGuard no_grad;
    model->forward(random_input(*model, gen));
    seen = omp_get_max_threads();
  });
  request.join();
  EXPECT_EQ(seen, wanted);
}

TEST(ConcurrentForward, CallsWithoutContextStillDrawFreshDropout) {
  auto model = golden::load_model("bert-mini");
  model->config.hidden_dropout = 0.1;
  model->set_training(true);
  Generator gen(5);
  ModelInput in = random_input(*model, gen);
  NoGradGuard no_grad;
  EXPECT_FALSE(same_bits(model->forward(in).logits.to_floats(), model->forward(in).logits.to_floats()));
}

}  // namespace
