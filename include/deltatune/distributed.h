#pragma once
// The processes of one data-parallel job, as the trainer and the sweep see them: each has a rank in
// [0, size), and they exchange buffers with collective calls that every process makes in the same
// order. Two implementations: MPI's world (a program started by `mpirun -np N` or `srun --mpi=pmix`,
// in a build that found MPI) and a single process (size 1: every collective is the identity).
//
//   std::shared_ptr<distributed::Communicator> comm = distributed::world();
//   options.communicator = comm;                 // the trainer averages gradients across processes
//   if (comm->rank() == 0) print(summary);       // rank 0 alone writes and prints
//
// A process that throws out of a collective leaves the others waiting in it: a front end ends the whole
// job then (abort), as MPI's default error handler does for MPI's own failures; mpirun likewise ends
// the job when one of its processes dies.
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace deltatune::distributed {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string name() const = 0;  // "single process", "MPI (Open MPI v4.1.4)"

  // Element-wise sums over every process, in place; every process gets the same result.
  virtual void allreduce_sum(std::span<float> values) = 0;
  virtual void allreduce_sum(std::span<double> values) = 0;
  // Every process's value, in rank order.
  virtual std::vector<uint64_t> allgather(uint64_t value) = 0;
  // `bytes` becomes the root's on every process (sizes may differ before the call).
  virtual void broadcast(std::string& bytes, int root) = 0;
  virtual void barrier() = 0;
  // Ends every process of the job at once with `code` (one process failed alone: the others must not
  // wait for it in a collective).
  [[noreturn]] virtual void abort(int code) = 0;
};

// One process alone: rank 0 of 1.
std::shared_ptr<Communicator> single_process();

// The job this process belongs to: MPI's world when the program was started by an MPI launcher
// (mpirun, mpiexec, srun --mpi=pmix) and built with MPI, initialised on first call and finalised at
// exit; otherwise single_process(). Without a launcher the program never touches MPI.
std::shared_ptr<Communicator> world();

// Threads per process for a job that set none: 0 (the library's default) alone; in a job, this
// machine's cores divided among the job's processes on it (Open MPI's OMPI_COMM_WORLD_LOCAL_SIZE,
// Slurm's SLURM_NTASKS_PER_NODE), at least 1, so that N processes do not oversubscribe the cores.
int default_threads();

// Whether this build has the MPI implementation (CMake found MPI).
bool built_with_mpi();

// The half-open range [begin, end) of `count` items that `rank` of `size` takes: contiguous parts, the
// first (count % size) one longer.
std::pair<size_t, size_t> share(size_t count, int rank, int size);

}  // namespace deltatune::distributed
