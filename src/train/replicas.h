#pragma once
// What keeps the processes of a data-parallel run in step: the gradients summed across processes in
// flat buckets, and a hash of the trainable weights that every process must agree on.
#include <cstdint>

#include "deltatune/distributed.h"
#include "deltatune/optim.h"

namespace deltatune::train_detail {

struct AllreduceCost {
  int64_t bytes = 0;  // gradient bytes this process sent into all-reduces
  double seconds = 0;
};

// Sums every parameter's gradient across processes, in place. Gradients go through flat float32
// buckets of at most `bucket_floats` values (one MPI call each, as DDP's buckets); a parameter that got
// no gradient on any process keeps none (the optimizer skips it everywhere alike), one that got a
// gradient somewhere gets the sum everywhere.
AllreduceCost allreduce_gradients(const NamedParams& params, distributed::Communicator& comm,
                                  size_t bucket_floats = size_t(1) << 22);

// FNV-1a over the names, shapes and float32 values of the tensors.
uint64_t weights_hash(const NamedParams& params);

// Throws ReplicasDiverged naming the first process whose hash differs from rank 0's.
void check_replicas_agree(const NamedParams& params, distributed::Communicator& comm, int64_t step);

}  // namespace deltatune::train_detail
