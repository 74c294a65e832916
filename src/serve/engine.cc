// The serving engine's front half: requests checked and queued from any thread (deltatune/serve.h).
// The scheduler loop that runs them is src/serve/scheduler.cc.
#include <future>
#include <utility>

#include "deltatune/serve_metrics.h"
#include "deltatune/trainer.h"
#include "deltatune/workflow.h"
#include "serve/scheduler.h"

namespace deltatune::serve {

Engine::Engine(EngineOptions options) : state_(std::make_unique<SchedulerState>(std::move(options))) {
  state_->loop = std::thread([s = state_.get()] { run_scheduler(*s); });
}

Engine::~Engine() { stop(std::chrono::milliseconds(0)); }

void Engine::add_delta(const std::string& name, const std::filesystem::path& dir) {
  run_between_steps(*state_, [&] { state_->groups.add(name, dir); });
}

void Engine::remove_delta(const std::string& name) {
  state_->groups.retire(name);
  wake(*state_);  // unloaded at the end of a step, once nothing it serves is in flight
}

std::vector<ModelInfo> Engine::models() const { return state_->groups.list(); }
const std::string& Engine::base_name() const { return state_->groups.base_name(); }
int64_t Engine::queue_depth() const { return state_->in_system.load(); }
Metrics& Engine::metrics() { return state_->metrics; }

namespace {
// Holds a request's place on a delta until the request is done (the scheduler may unload it after).
struct Acquired {
  ModelGroups& groups;
  std::shared_ptr<DeltaEntry> entry;
  Acquired(ModelGroups& g, const std::string& name) : groups(g), entry(g.acquire(name)) {}
  ~Acquired() {
    if (entry) groups.release(*entry);
  }
  std::shared_ptr<DeltaEntry> release_to_scheduler() { return std::exchange(entry, nullptr); }
};

void check_task(const DeltaEntry& e, HeadKind want, const char* what) {
  if (e.group->model->head != want)
    throw BadRequest("the model '" + e.info.name + "' cannot " + what + ": it is a " + e.info.task + " model",
                     "model");
}
}  // namespace

std::shared_ptr<PendingCompletion> Engine::submit(const CompletionRequest& r) {
  SchedulerState& s = *state_;
  Acquired held(s.groups, r.model);
  const DeltaEntry& e = *held.entry;
  check_task(e, HeadKind::CausalLM, "generate text");
  if (r.options.max_new_tokens < 1 || r.options.max_new_tokens > s.options.max_tokens_cap)
    throw BadRequest("max_tokens must be between 1 and the server's cap " +
                         std::to_string(s.options.max_tokens_cap) + ", got " +
                         std::to_string(r.options.max_new_tokens),
                     "max_tokens");
  std::vector<int64_t> prompt = s.groups.tokenizer().encode(r.prompt, true).ids;
  if (prompt.empty()) throw BadRequest("the prompt gives no tokens", "prompt");
  const TransformerModel& model = *e.group->model;
  if (auto limit = model.max_input_length(); limit && int64_t(prompt.size()) >= *limit)
    throw BadRequest("the prompt's " + std::to_string(prompt.size()) + " tokens leave none of the model's " +
                         std::to_string(*limit) + " positions free",
                     "prompt");
  GenerationOptions options = r.options;
  workflow::add_model_stop_ids(options, model, s.groups.tokenizer());  // where `generate` stops
  auto seq = std::make_shared<Sequence>(held.release_to_scheduler(), s.groups.tokenizer(), std::move(prompt),
                                        std::move(options), r.stop);
  try {
    enqueue(s, [&] { s.waiting.push_back(seq); });
  } catch (...) {
    s.groups.release(*seq->entry);
    throw;
  }
  return seq;
}

Completion Engine::complete(const CompletionRequest& request) { return submit(request)->result(); }

namespace {
std::shared_ptr<EncodeJob> encode_job(ModelGroups& groups, const std::shared_ptr<DeltaEntry>& entry,
                                      const std::vector<ClassifyInput>& inputs, int64_t max_length,
                                      bool embed) {
  if (inputs.empty()) throw BadRequest("input is empty", "input");
  std::vector<data::Example> examples;
  for (auto& in : inputs) examples.push_back({in.text, in.pair, std::nullopt, -1, "request"});
  auto job = std::make_shared<EncodeJob>();
  job->entry = entry;
  job->embed = embed;
  job->data = data::encode(examples, groups.tokenizer(), max_length);
  for (auto& ex : job->data.examples)
    if (ex.ids.empty()) throw BadRequest("an input gives no tokens", "input");
  return job;
}
}  // namespace

std::vector<Classification> Engine::classify(const std::string& model,
                                             const std::vector<ClassifyInput>& inputs) {
  SchedulerState& s = *state_;
  Acquired held(s.groups, model);
  check_task(*held.entry, HeadKind::SequenceClassification, "classify");
  auto job = encode_job(s.groups, held.entry, inputs, held.entry->max_length, false);
  std::future<void> done = job->done.get_future();
  enqueue(s, [&] { s.encode_waiting.push_back(job); });
  done.get();
  if (job->error) std::rethrow_exception(std::exchange(job->error, nullptr));
  std::vector<Classification> out;
  const data::LabelMap& labels = held.entry->labels;
  for (auto& row : job->rows) {
    Classification c;
    size_t best = 0;
    for (size_t k = 0; k < row.size(); ++k) {
      c.probabilities.emplace_back(labels.name(int64_t(k)), double(row[k]));
      if (row[k] > row[best]) best = k;
    }
    c.label = labels.name(int64_t(best));
    c.probability = row[best];
    out.push_back(std::move(c));
  }
  return out;
}

Embeddings Engine::embed(const std::string& model, const std::vector<std::string>& inputs) {
  SchedulerState& s = *state_;
  Acquired held(s.groups, model);
  std::vector<ClassifyInput> texts;
  for (auto& t : inputs) texts.push_back({t, std::nullopt});
  const int64_t max_length = held.entry->group->model->max_input_length().value_or(0);
  auto job = encode_job(s.groups, held.entry, texts, max_length, true);
  std::future<void> done = job->done.get_future();
  enqueue(s, [&] { s.encode_waiting.push_back(job); });
  done.get();
  if (job->error) std::rethrow_exception(std::exchange(job->error, nullptr));
  Embeddings out;
  out.vectors = std::move(job->rows);
  for (auto& ex : job->data.examples) out.tokens += int64_t(ex.ids.size());
  return out;
}

void Engine::stop(std::chrono::milliseconds grace) {
  if (!state_ || !state_->loop.joinable()) return;
  stop_scheduler(*state_, grace);
}

}  // namespace deltatune::serve
