// The single-process communicator, the choice of world(), and the even split of items over ranks.
#include <algorithm>
#include <cstdlib>
#include <thread>

#include "deltatune/distributed.h"
#include "distributed/mpi_world.h"

namespace deltatune::distributed {
namespace {

class SingleProcess final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string name() const override { return "single process"; }
  void allreduce_sum(std::span<float>) override {}
  void allreduce_sum(std::span<double>) override {}
  std::vector<uint64_t> allgather(uint64_t value) override { return {value}; }
  void broadcast(std::string&, int) override {}
  void barrier() override {}
  [[noreturn]] void abort(int code) override { std::exit(code); }
};

// Open MPI's mpirun, PMIx launchers (srun --mpi=pmix, prterun) and MPICH's Hydra set these.
bool started_by_mpi_launcher() {
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE"})
    if (std::getenv(name)) return true;
  return false;
}

}  // namespace

std::shared_ptr<Communicator> single_process() { return std::make_shared<SingleProcess>(); }

std::shared_ptr<Communicator> world() {
  static const std::shared_ptr<Communicator> the_world =
      built_with_mpi() && started_by_mpi_launcher() ? mpi_world() : single_process();
  return the_world;
}

int default_threads() {
  if (world()->size() == 1) return 0;
  int local = 1;
  for (const char* name : {"OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS_PER_NODE"})
    if (const char* value = std::getenv(name)) {
      local = std::max(1, std::atoi(value));
      break;
    }
  return std::max(1, int(std::thread::hardware_concurrency()) / local);
}

std::pair<size_t, size_t> share(size_t count, int rank, int size) {
  const size_t n = size_t(size), r = size_t(rank), base = count / n, extra = count % n;
  const size_t begin = r * base + std::min(r, extra);
  return {begin, begin + base + (r < extra ? 1 : 0)};
}

}  // namespace deltatune::distributed
