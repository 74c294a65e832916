#pragma once
// A serving engine: one frozen base model, many deltas, requests from many threads answered by one
// scheduler loop that batches them whatever their delta (continuous batching).
//
//   serve::EngineOptions o;
//   o.model_dir = "assets/models/gpt2-mini";
//   serve::Engine engine(o);                       // starts the scheduler thread
//   engine.add_delta("poet", "runs/poet/delta");   // our format or PEFT's
//   serve::CompletionRequest r;
//   r.model = "poet";
//   r.prompt = "Once upon";
//   r.options.max_new_tokens = 8;
//   serve::Completion c = engine.complete(r);      // or submit(r), to stream the text as it comes
//
// Each step the loop answers the waiting classify/embedding requests (one padded batch per model),
// prefills newly admitted sequences (each into a KV cache of its own) and runs one decode step of
// every running sequence in one batch per model, whatever the rows' deltas (ModelInput::row_caches).
// A sequence's cache is freed the moment it finishes or is cancelled. Deltas that act through linear
// hooks (LoRA, IA3, adapters, ...) share the base model's batches (MixedBatch). A delta that cannot
// (prefix, prompt, BitFit) is served by a model of its own, batched among its own requests; a
// classifier delta, which brings its own task head, by a model whose base tensors are the base's.
// Greedy output is the one `generate` gives for the same delta and prompt; sampled output too, for the
// same seed (each completion draws from its own generator).
#include <chrono>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "deltatune/error.h"
#include "deltatune/generate.h"
#include "deltatune/quantize.h"

namespace deltatune::serve {

class Metrics;
struct SchedulerState;  // the library's own (src/serve/scheduler.h)

// Asked for a model (delta) that is not loaded: HTTP 404.
struct UnknownModel : Error {
  using Error::Error;
};
// Too many requests waiting or running (EngineOptions::max_queue): HTTP 429.
struct QueueFull : Error {
  using Error::Error;
};
// The engine is stopping and takes nothing new: HTTP 503.
struct ShuttingDown : Error {
  using Error::Error;
};
// A request that cannot be served as asked (a prompt over the context, max_tokens over the cap, a
// model of the wrong kind): HTTP 400. `param` names the request field at fault.
struct BadRequest : ConfigError {
  BadRequest(const std::string& message, std::string param) : ConfigError(message), param(std::move(param)) {}
  std::string param;
};

struct EngineOptions {
  std::filesystem::path model_dir;
  std::string base_name;  // the model name of the base alone; default: the folder's name
  bool bf16 = false;      // bfloat16 products (use_bf16)
  // A quantised frozen base (use_quantized, QLoRA's base): quantised once as it is read, and shared
  // by every model the server holds (a classifier's, a delta served alone).
  std::optional<QuantFormat> quantize;
  int64_t max_batch_tokens = 2048;  // per step: prompt tokens prefilled + decode rows (>= 1 sequence)
  int64_t max_queue = 256;          // sequences and encode requests waiting or running at once
  int64_t max_tokens_cap = 1024;    // the most tokens one completion may ask for
  // Each step decodes (and encodes, for classify and embeddings) the requests of one delta only
  // (rotating), as servers that cannot mix deltas in a batch do: the baseline the benchmark measures
  // mixed batches against.
  bool one_delta_per_step = false;
};

struct ModelInfo {
  std::string name;
  std::string path;          // the delta folder; empty for the base
  std::string method;        // "lora", ...; "base" for the base
  std::string task;          // "causal-lm", "sequence-classification", ...
  bool shares_batch = true;  // false: served by a model of its own
};

struct CompletionRequest {
  std::string model;  // a delta's name, or the base's
  std::string prompt;
  GenerationOptions options;      // max_new_tokens, sample, temperature, top_p, seed
  std::vector<std::string> stop;  // the text ends before the first of these it would contain
};

struct Completion {
  std::string text;           // the continuation (cut before a stop string)
  std::vector<int64_t> ids;   // the tokens produced
  std::string finish_reason;  // "stop" (end of sequence or a stop string), "length", "cancelled"
  int64_t prompt_tokens = 0;
};

// A submitted completion. The HTTP thread waits on it while the scheduler fills it.
class PendingCompletion {
 public:
  virtual ~PendingCompletion() = default;
  // Waits until there is text not yet taken or the end (at most `timeout`); appends the new text to
  // `text`. True once the completion is finished and all its text taken.
  virtual bool take(std::string& text, std::chrono::milliseconds timeout) = 0;
  // Waits until finished, at most `timeout`; true once finished (result() then returns at once).
  virtual bool wait(std::chrono::milliseconds timeout) = 0;
  // Blocks until finished; throws the error the sequence met, if any.
  virtual Completion result() = 0;
  // The scheduler drops the sequence at its next step and frees its cache (a client went away).
  virtual void cancel() = 0;
  virtual int64_t prompt_tokens() const = 0;
};

struct ClassifyInput {
  std::string text;
  std::optional<std::string> pair;
};
struct Classification {
  std::string label;
  double probability = 0;
  std::vector<std::pair<std::string, double>> probabilities;  // every label, in the label map's order
};

struct Embeddings {
  std::vector<std::vector<float>> vectors;  // mean of the last hidden state over each input's tokens
  int64_t tokens = 0;
};

class Engine {
 public:
  explicit Engine(EngineOptions options);
  ~Engine();  // stop(0)
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Loads a delta folder under `name` (run on the scheduler thread, between steps).
  void add_delta(const std::string& name, const std::filesystem::path& dir);
  // New requests for `name` are refused at once; it is unloaded once the requests it has finish.
  void remove_delta(const std::string& name);
  std::vector<ModelInfo> models() const;
  const std::string& base_name() const;

  std::shared_ptr<PendingCompletion> submit(const CompletionRequest& request);
  Completion complete(const CompletionRequest& request);  // submit and wait
  // Blocking; batched with whatever else waits.
  std::vector<Classification> classify(const std::string& model, const std::vector<ClassifyInput>& inputs);
  Embeddings embed(const std::string& model, const std::vector<std::string>& inputs);

  // Requests waiting or running now.
  int64_t queue_depth() const;
  Metrics& metrics();
  // Takes nothing new, lets what runs finish for at most `grace`, cancels the rest, ends the loop.
  void stop(std::chrono::milliseconds grace);

 private:
  std::unique_ptr<SchedulerState> state_;
};

}  // namespace deltatune::serve
