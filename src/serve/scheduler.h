#pragma once
// The scheduler loop behind serve::Engine (deltatune/serve.h): one thread owns every model forward.
// Requests wait in queues; each step takes what fits in max_batch_tokens, runs it, and frees what
// finished. Work that must not overlap a forward (loading a delta) runs between steps on the loop.
#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <mutex>
#include <thread>

#include "deltatune/serve_metrics.h"
#include "serve/model_groups.h"
#include "serve/sequence.h"

namespace deltatune::serve {

// Classify or embed: one request's inputs, answered as one batch with whatever else waits.
struct EncodeJob {
  std::shared_ptr<DeltaEntry> entry;
  bool embed = false;
  data::EncodedDataset data;
  std::vector<std::vector<float>> rows;  // per input: the class probabilities, or the embedding
  // The error the batch met, written before `done` is set. The scheduler thread keeps no reference to
  // it once `done` is set, so the waiter, the last to use it, frees it: libstdc++ counts an exception's
  // references in code ThreadSanitizer cannot see, and a free on the scheduler thread after the
  // waiter's use was reported as a race. (std::promise::set_exception keeps a copy on the setting
  // thread until it returns.)
  std::exception_ptr error;
  std::promise<void> done;
};

struct SchedulerState {
  explicit SchedulerState(EngineOptions o) : options(std::move(o)), groups(options) {}
  EngineOptions options;
  Metrics metrics;
  ModelGroups groups;

  std::mutex mutex;  // guards the queues and flags below
  std::condition_variable wake, drained;
  std::deque<std::shared_ptr<Sequence>> waiting;
  std::deque<std::shared_ptr<EncodeJob>> encode_waiting;
  std::deque<std::function<void(bool run)>> between_steps;  // run = false: the loop ended, fail
  bool accepting = true, quit = false, poked = false;
  std::atomic<int64_t> in_system{0};  // sequences and encode jobs waiting or running

  std::vector<std::shared_ptr<Sequence>> running;  // the loop thread's alone
  std::thread loop;
};

// Queues a request (`push` runs under the lock): ShuttingDown, or QueueFull at max_queue.
void enqueue(SchedulerState& s, const std::function<void()>& push);
// Runs `task` on the loop between two steps and waits for it; its exception comes back here.
void run_between_steps(SchedulerState& s, const std::function<void()>& task);
void wake(SchedulerState& s);  // something changed that the loop should look at (a retired delta)
void run_scheduler(SchedulerState& s);
// Refuses new requests, waits up to `grace` for those in the system, fails the rest, joins the loop.
void stop_scheduler(SchedulerState& s, std::chrono::milliseconds grace);

}  // namespace deltatune::serve
