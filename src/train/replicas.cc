// Gradient buckets and the weights hash of a data-parallel run.
#include "train/replicas.h"

#include <chrono>
#include <cstring>
#include <string>
#include <vector>

#include "deltatune/autograd.h"
#include "deltatune/trainer.h"

namespace deltatune::train_detail {
namespace {

// One bucket: consecutive parameters whose gradients, plus one "has a gradient" flag each, fit.
struct Bucket {
  size_t first = 0, last = 0;  // parameters [first, last)
  size_t floats = 0;
};

std::vector<Bucket> buckets_of(const NamedParams& params, size_t bucket_floats) {
  std::vector<Bucket> out;
  Bucket b;
  for (size_t i = 0; i < params.size(); ++i) {
    const size_t n = size_t(params[i].second.numel()) + 1;
    if (b.last > b.first && b.floats + n > bucket_floats) {
      out.push_back(b);
      b = {i, i, 0};
    }
    b.last = i + 1;
    b.floats += n;
  }
  if (b.last > b.first) out.push_back(b);
  return out;
}

void reduce_bucket(const NamedParams& params, const Bucket& b, std::vector<float>& flat,
                   distributed::Communicator& comm) {
  flat.assign(b.floats, 0.0f);
  size_t at = 0;
  for (size_t i = b.first; i < b.last; ++i) {
    const Tensor grad = params[i].second.grad();
    const size_t n = size_t(params[i].second.numel());
    if (grad.defined()) {
      const std::vector<float> values = grad.to_floats();
      std::memcpy(flat.data() + at, values.data(), n * sizeof(float));
      flat[at + n] = 1.0f;
    }
    at += n + 1;
  }
  comm.allreduce_sum(flat);
  at = 0;
  for (size_t i = b.first; i < b.last; ++i) {
    Tensor param = params[i].second;
    const size_t n = size_t(param.numel());
    if (flat[at + n] > 0.0f) {
      const std::vector<float> summed(flat.begin() + ptrdiff_t(at), flat.begin() + ptrdiff_t(at + n));
      param.set_grad(Tensor::from_floats(summed, param.shape()));
    }
    at += n + 1;
  }
}

}  // namespace

AllreduceCost allreduce_gradients(const NamedParams& params, distributed::Communicator& comm,
                                  size_t bucket_floats) {
  AllreduceCost cost;
  if (comm.size() == 1) return cost;
  const auto started = std::chrono::steady_clock::now();
  std::vector<float> flat;
  for (const Bucket& b : buckets_of(params, bucket_floats)) {
    reduce_bucket(params, b, flat, comm);
    cost.bytes += int64_t(b.floats * sizeof(float));
  }
  cost.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  return cost;
}

uint64_t weights_hash(const NamedParams& params) {
  uint64_t h = 0xcbf29ce484222325ull;
  auto mix = [&h](const void* data, size_t bytes) {
    const auto* p = static_cast<const unsigned char*>(data);
    for (size_t i = 0; i < bytes; ++i) h = (h ^ p[i]) * 0x100000001b3ull;
  };
  NoGradGuard guard;
  for (const auto& [name, t] : params) {
    mix(name.data(), name.size());
    for (int64_t d : t.shape()) mix(&d, sizeof d);
    const std::vector<float> values = t.to_floats();
    mix(values.data(), values.size() * sizeof(float));
  }
  return h;
}

void check_replicas_agree(const NamedParams& params, distributed::Communicator& comm, int64_t step) {
  if (comm.size() == 1) return;
  const std::vector<uint64_t> hashes = comm.allgather(weights_hash(params));
  for (size_t r = 1; r < hashes.size(); ++r)
    if (hashes[r] != hashes[0])
      throw train::ReplicasDiverged("the trainable weights of process " + std::to_string(r) +
                                    " differ from process 0's at step " + std::to_string(step) +
                                    ": the processes no longer train the same model (a nondeterministic "
                                    "reduction, or different data or settings per process)");
}

}  // namespace deltatune::train_detail
