// One scheduler step: the waiting classify/embedding requests (one padded batch per model), one decode
// step of every running sequence (one batch per model, each row with its own delta and cache), then
// the prefill of the newly admitted sequences (their prompts in one batch per model); what finished is
// freed at once. With one_delta_per_step (the benchmark's no-mixing baseline) the encode batch and the
// decode rows hold one delta's requests only.
#include "serve/scheduler.h"

#include <algorithm>
#include <set>

#include "deltatune/ops.h"
#include "deltatune/trainer.h"

namespace deltatune::serve {
namespace {

using Seconds = std::chrono::duration<double>;

// What one step ran, for the metrics.
struct StepCount {
  int64_t rows = 0;
  std::set<const DeltaEntry*> deltas;
  void add(const DeltaEntry* e) {
    ++rows;
    deltas.insert(e);
  }
};

std::vector<float> logits_row(const Tensor& logits, int64_t b, int64_t t) {
  return logits.select(0, b).select(0, t).contiguous().to_floats();
}

// GPT-2's learned positions end; a sequence stops where `generate` stops, before a token with no
// position of its own (rotary positions have no end).
bool out_of_positions(const TransformerModel& model, const KVCache& cache) {
  if (model.config.family != ArchFamily::Gpt2) return false;
  int64_t prefix = 0;
  for (const auto& hook : model.attention_hooks)
    if (hook->enabled) prefix += hook->length();
  return model.config.max_position_embeddings - cache.length - prefix <= 1;
}

std::unique_ptr<KVCache> cache_for(const Sequence& q) {
  auto cache = std::make_unique<KVCache>();
  cache->reserve = int64_t(q.prompt.size()) + std::min<int64_t>(q.options.max_new_tokens, 1024);
  return cache;
}

// A prompt prefilled alone: for a model with a soft prompt (prompt tuning), which joins a sequence's
// first pass and so cannot share a row-cache batch.
void prefill_alone(SchedulerState& s, Sequence& q) {
  try {
    const int64_t length = int64_t(q.prompt.size());
    q.cache = cache_for(q);
    ModelInput in;
    in.input_ids = Tensor::from_ints(q.prompt, {1, length});
    in.cache = q.cache.get();
    const Tensor logits = q.entry->group->forward(in, {q.entry->row_name}).logits;
    s.metrics.prefill(1);
    q.add_token(pick_token(logits_row(logits, 0, logits.size(1) - 1), q.options, q.generator));
    s.metrics.time_to_first_token(Seconds(q.first_token - q.submitted).count());
  } catch (...) {
    q.fail(std::current_exception());
  }
}

// The prompts of one model in one forward, whatever their deltas: right-padded to the longest, each row
// with its own empty cache (ModelInput::row_caches), so the base's products run once for all of them.
// Causal attention keeps every real position from seeing the padding; each cache then keeps its
// prompt's positions only.
void prefill_together(SchedulerState& s, ModelGroup& group, const std::vector<Sequence*>& rows) {
  try {
    size_t longest = 0;
    for (Sequence* q : rows) longest = std::max(longest, q->prompt.size());
    ModelInput in;
    std::vector<int64_t> ids;
    std::vector<std::string> deltas;
    for (Sequence* q : rows) {
      q->cache = cache_for(*q);
      ids.insert(ids.end(), q->prompt.begin(), q->prompt.end());
      ids.insert(ids.end(), longest - q->prompt.size(), q->prompt.back());  // padding: any valid id
      in.row_caches.push_back(q->cache.get());
      deltas.push_back(q->entry->row_name);
    }
    in.input_ids = Tensor::from_ints(ids, {int64_t(rows.size()), int64_t(longest)});
    const Tensor logits = group.forward(in, deltas).logits;
    s.metrics.prefill(int64_t(rows.size()));
    for (size_t b = 0; b < rows.size(); ++b) {
      Sequence& q = *rows[b];
      q.cache->length = int64_t(q.prompt.size());
      q.add_token(pick_token(logits_row(logits, int64_t(b), q.cache->length - 1), q.options, q.generator));
      s.metrics.time_to_first_token(Seconds(q.first_token - q.submitted).count());
    }
  } catch (...) {
    for (Sequence* q : rows) q->fail(std::current_exception());
  }
}

bool has_soft_prompt(const TransformerModel& model) {
  return std::any_of(model.embedding_hooks.begin(), model.embedding_hooks.end(),
                     [](const auto& hook) { return hook->enabled; });
}

void prefill(SchedulerState& s, const std::vector<std::shared_ptr<Sequence>>& admitted, StepCount& count) {
  std::map<ModelGroup*, std::vector<Sequence*>> by_model;
  for (auto& q : admitted) {
    if (q->cancelled) {
      q->finish("cancelled");
      continue;
    }
    by_model[q->entry->group].push_back(q.get());
    count.add(q->entry.get());
  }
  for (auto& [group, rows] : by_model) {
    if (rows.size() > 1 && !has_soft_prompt(*group->model)) {
      prefill_together(s, *group, rows);
    } else {
      for (Sequence* q : rows) prefill_alone(s, *q);
    }
  }
}

// With one_delta_per_step, the running sequences of the delta that waited longest go first and alone.
size_t one_delta_first(std::vector<std::shared_ptr<Sequence>>& running) {
  if (running.empty()) return 0;
  const DeltaEntry* first = running.front()->entry.get();
  auto end =
      std::stable_partition(running.begin(), running.end(), [&](auto& q) { return q->entry.get() == first; });
  return size_t(end - running.begin());
}

void decode(SchedulerState& s, StepCount& count) {
  const size_t rows = s.options.one_delta_per_step ? one_delta_first(s.running) : s.running.size();
  const size_t limit = std::min(rows, size_t(std::max<int64_t>(s.options.max_batch_tokens, 1)));
  std::map<ModelGroup*, std::vector<Sequence*>> by_model;
  for (size_t i = 0; i < limit; ++i) {
    Sequence& q = *s.running[i];
    if (q.finished()) continue;
    if (q.cancelled) {
      q.finish("cancelled");
    } else if (out_of_positions(*q.entry->group->model, *q.cache)) {
      q.finish("length");
    } else {
      by_model[q.entry->group].push_back(&q);
      count.add(q.entry.get());
    }
  }
  // More rows than a step takes: the ones left out go first next time.
  std::rotate(s.running.begin(), s.running.begin() + std::ptrdiff_t(limit), s.running.end());
  for (auto& [group, rows] : by_model) {
    try {
      ModelInput in;
      std::vector<int64_t> last;
      std::vector<std::string> deltas;
      for (Sequence* q : rows) {
        last.push_back(q->ids.back());
        in.row_caches.push_back(q->cache.get());
        deltas.push_back(q->entry->row_name);
      }
      in.input_ids = Tensor::from_ints(last, {int64_t(rows.size()), 1});
      const Tensor logits = group->forward(in, deltas).logits;
      for (size_t b = 0; b < rows.size(); ++b)
        rows[b]->add_token(
            pick_token(logits_row(logits, int64_t(b), 0), rows[b]->options, rows[b]->generator));
    } catch (...) {
      for (Sequence* q : rows) q->fail(std::current_exception());
    }
  }
}

// Mean of the last hidden state over each row's real tokens.
std::vector<std::vector<float>> mean_pool(const Tensor& hidden, const Tensor& mask) {
  const int64_t B = hidden.size(0), T = hidden.size(1), H = hidden.size(2);
  const std::vector<float> h = hidden.contiguous().to_floats(), m = mask.float32().contiguous().to_floats();
  std::vector<std::vector<float>> out(size_t(B), std::vector<float>(size_t(H), 0.0f));
  for (int64_t b = 0; b < B; ++b) {
    double n = 0;
    std::vector<double> sum(size_t(H), 0.0);
    for (int64_t t = 0; t < T; ++t) {
      if (m[size_t(b * T + t)] <= 0) continue;
      n += 1;
      for (int64_t k = 0; k < H; ++k) sum[size_t(k)] += h[size_t((b * T + t) * H + k)];
    }
    for (int64_t k = 0; k < H; ++k) out[size_t(b)][size_t(k)] = float(n > 0 ? sum[size_t(k)] / n : 0.0);
  }
  return out;
}

// One padded forward for the jobs that share a model and a kind (classify or embed).
void encode_batch(SchedulerState& s, ModelGroup& group, const std::vector<EncodeJob*>& jobs) {
  data::EncodedDataset all;
  std::vector<std::string> deltas;
  for (EncodeJob* j : jobs)
    for (auto& ex : j->data.examples) {
      all.examples.push_back(ex);
      deltas.push_back(j->entry->row_name);
    }
  data::Batcher batcher(all, {.batch_size = int64_t(all.size())}, data::padding_id(s.groups.tokenizer()));
  std::vector<size_t> indices(all.size());
  for (size_t i = 0; i < indices.size(); ++i) indices[i] = i;
  const data::Batch batch = batcher.make_batch(indices);
  ModelInput in = train::model_input(*group.model, batch);
  const bool embed = jobs.front()->embed;
  in.compute_logits = !embed;
  const ModelOutput out = group.forward(in, deltas);
  std::vector<std::vector<float>> rows;
  if (embed) {
    rows = mean_pool(out.last_hidden_state, out.attention_mask);
  } else {
    const int64_t C = out.logits.size(-1);
    const std::vector<float> p = ops::softmax(out.logits, -1).to_floats();
    for (size_t b = 0; b < all.size(); ++b)
      rows.emplace_back(p.begin() + ptrdiff_t(b) * C, p.begin() + ptrdiff_t(b + 1) * C);
  }
  size_t at = 0;
  for (EncodeJob* j : jobs)
    for (size_t i = 0; i < j->data.size(); ++i) j->rows.push_back(std::move(rows[at++]));
}

void encode(SchedulerState& s, const std::vector<std::shared_ptr<EncodeJob>>& jobs, StepCount& count) {
  std::map<std::pair<ModelGroup*, bool>, std::vector<EncodeJob*>> by_model;
  for (auto& j : jobs) {
    by_model[{j->entry->group, j->embed}].push_back(j.get());
    for (size_t i = 0; i < j->data.size(); ++i) count.add(j->entry.get());
  }
  for (auto& [key, batch] : by_model) {
    std::exception_ptr error;
    try {
      encode_batch(s, *key.first, batch);
    } catch (...) {
      error = std::current_exception();
    }
    for (EncodeJob* j : batch) j->error = error;
    error = nullptr;  // none left on this thread (EncodeJob::error)
    for (EncodeJob* j : batch) j->done.set_value();
  }
  for (auto& j : jobs) {
    int64_t tokens = 0;
    for (auto& ex : j->data.examples) tokens += int64_t(ex.ids.size());
    s.metrics.tokens(tokens, 0);
  }
  s.in_system -= int64_t(jobs.size());
}

// Frees what finished: its cache at once, its hold on the delta, its place in the queue.
void reap(SchedulerState& s) {
  auto done =
      std::stable_partition(s.running.begin(), s.running.end(), [](auto& q) { return !q->finished(); });
  for (auto it = done; it != s.running.end(); ++it) {
    Sequence& q = **it;
    q.cache.reset();
    s.groups.release(*q.entry);
    s.metrics.tokens(int64_t(q.prompt.size()), int64_t(q.ids.size()));
    s.metrics.finished(q.end_reason());
    const auto now = Clock::now();
    s.metrics.total_latency(Seconds(now - q.submitted).count());
    if (q.ids.size() > 1)
      s.metrics.per_output_token(Seconds(now - q.first_token).count() / double(q.ids.size() - 1));
  }
  s.in_system -= int64_t(s.running.end() - done);
  s.running.erase(done, s.running.end());
}

// Takes from the queues what fits this step: at least one request when nothing runs.
void take_work(SchedulerState& s, std::vector<std::shared_ptr<EncodeJob>>& encodes,
               std::vector<std::shared_ptr<Sequence>>& admitted) {
  int64_t budget = s.options.max_batch_tokens - int64_t(s.running.size());
  auto fits = [&](int64_t tokens) {
    const bool first = s.running.empty() && encodes.empty() && admitted.empty();
    if (!first && tokens > budget) return false;
    budget -= tokens;
    return true;
  };
  // With one_delta_per_step, a step encodes the requests of the delta that waited longest only; the
  // others keep their places.
  const DeltaEntry* only = s.options.one_delta_per_step && !s.encode_waiting.empty()
                               ? s.encode_waiting.front()->entry.get()
                               : nullptr;
  for (auto it = s.encode_waiting.begin(); it != s.encode_waiting.end();) {
    if (only && (*it)->entry.get() != only) {
      ++it;
      continue;
    }
    int64_t tokens = 0;
    for (auto& ex : (*it)->data.examples) tokens += int64_t(ex.ids.size());
    if (!fits(tokens)) break;
    encodes.push_back(std::move(*it));
    it = s.encode_waiting.erase(it);
  }
  while (!s.waiting.empty() && fits(int64_t(s.waiting.front()->prompt.size()))) {
    admitted.push_back(std::move(s.waiting.front()));
    s.waiting.pop_front();
  }
}

// The loop has stopped: whatever is left is answered with an error.
void fail_remaining(SchedulerState& s) {
  std::lock_guard lock(s.mutex);
  for (auto& q : s.waiting) s.running.push_back(q);
  s.waiting.clear();
  for (auto& q : s.running)
    if (!q->finished())
      q->fail(std::make_exception_ptr(ShuttingDown("the server stopped before this completion finished")));
  reap(s);
  for (auto& j : s.encode_waiting) {
    j->error = std::make_exception_ptr(ShuttingDown("the server stopped"));
    j->done.set_value();
    --s.in_system;
  }
  s.encode_waiting.clear();
  for (auto& task : s.between_steps) task(false);
  s.between_steps.clear();
}

}  // namespace

void enqueue(SchedulerState& s, const std::function<void()>& push) {
  {
    std::lock_guard lock(s.mutex);
    if (!s.accepting) throw ShuttingDown("the server is shutting down");
    if (s.in_system >= s.options.max_queue)
      throw QueueFull("the server's queue is full (" + std::to_string(s.options.max_queue) + " requests)");
    ++s.in_system;
    push();
  }
  s.wake.notify_one();
}

void run_between_steps(SchedulerState& s, const std::function<void()>& task) {
  std::promise<void> done;
  std::future<void> result = done.get_future();
  std::exception_ptr error;  // written before `done` is set, freed here (see EncodeJob::error)
  {
    std::lock_guard lock(s.mutex);
    if (!s.accepting) throw ShuttingDown("the server is shutting down");
    s.between_steps.push_back([&task, &done, &error](bool run) {
      if (!run) {
        error = std::make_exception_ptr(ShuttingDown("the server is shutting down"));
      } else {
        try {
          task();
        } catch (...) {
          error = std::current_exception();
        }
      }
      done.set_value();
    });
  }
  s.wake.notify_one();
  result.get();
  if (error) std::rethrow_exception(error);
}

void wake(SchedulerState& s) {
  {
    std::lock_guard lock(s.mutex);
    s.poked = true;
  }
  s.wake.notify_one();
}

void run_scheduler(SchedulerState& s) {
  for (;;) {
    std::deque<std::function<void(bool)>> tasks;
    std::vector<std::shared_ptr<EncodeJob>> encodes;
    std::vector<std::shared_ptr<Sequence>> admitted;
    {
      std::unique_lock lock(s.mutex);
      s.wake.wait(lock, [&] {
        return s.quit || s.poked || !s.between_steps.empty() || !s.waiting.empty() ||
               !s.encode_waiting.empty() || !s.running.empty();
      });
      if (s.quit) break;
      s.poked = false;
      tasks.swap(s.between_steps);
      take_work(s, encodes, admitted);
    }
    for (auto& task : tasks) task(true);
    StepCount count;
    encode(s, encodes, count);
    decode(s, count);
    prefill(s, admitted, count);
    s.running.insert(s.running.end(), admitted.begin(), admitted.end());
    if (count.rows > 0) s.metrics.step(count.rows, int64_t(count.deltas.size()));
    reap(s);
    s.groups.remove_retired();
    s.drained.notify_all();
  }
  fail_remaining(s);
}

void stop_scheduler(SchedulerState& s, std::chrono::milliseconds grace) {
  {
    std::unique_lock lock(s.mutex);
    s.accepting = false;
    s.drained.wait_for(lock, grace, [&] { return s.in_system == 0; });
    s.quit = true;
  }
  s.wake.notify_all();
  s.loop.join();
}

}  // namespace deltatune::serve
