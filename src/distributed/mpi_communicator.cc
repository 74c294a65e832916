// MPI_COMM_WORLD behind the Communicator seam. MPI keeps its default error handler
// (MPI_ERRORS_ARE_FATAL): a failed collective ends the whole job, never a hang.
#include <mpi.h>

#include <cstdlib>
#include <limits>

#include "deltatune/error.h"
#include "distributed/mpi_world.h"

namespace deltatune::distributed {
namespace {

// MPI counts are int: long buffers go in pieces.
constexpr size_t kMaxCount = size_t(std::numeric_limits<int>::max() / 2);

template <class T>
void allreduce_in_pieces(std::span<T> values, MPI_Datatype type) {
  for (size_t start = 0; start < values.size(); start += kMaxCount) {
    const int count = int(std::min(kMaxCount, values.size() - start));
    MPI_Allreduce(MPI_IN_PLACE, values.data() + start, count, type, MPI_SUM, MPI_COMM_WORLD);
  }
}

class MpiWorld final : public Communicator {
 public:
  MpiWorld() {
    int initialised = 0;
    MPI_Initialized(&initialised);
    if (!initialised) {
      // Training and sweeps call MPI from the main thread only.
      int provided = 0;
      MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided);
      std::atexit(finalise);
    }
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string name() const override {
    char version[MPI_MAX_LIBRARY_VERSION_STRING];
    int length = 0;
    MPI_Get_library_version(version, &length);
    std::string text(version, size_t(length));
    const size_t comma = text.find(',');  // "Open MPI v4.1.4, package: ..."
    return "MPI (" + text.substr(0, comma) + ")";
  }
  void allreduce_sum(std::span<float> values) override { allreduce_in_pieces(values, MPI_FLOAT); }
  void allreduce_sum(std::span<double> values) override { allreduce_in_pieces(values, MPI_DOUBLE); }
  std::vector<uint64_t> allgather(uint64_t value) override {
    std::vector<uint64_t> all(size_t(size_), 0);
    MPI_Allgather(&value, 1, MPI_UINT64_T, all.data(), 1, MPI_UINT64_T, MPI_COMM_WORLD);
    return all;
  }
  void broadcast(std::string& bytes, int root) override {
    unsigned long long length = bytes.size();
    MPI_Bcast(&length, 1, MPI_UNSIGNED_LONG_LONG, root, MPI_COMM_WORLD);
    if (length > kMaxCount) throw Error("broadcast: " + std::to_string(length) + " bytes is too many");
    bytes.resize(size_t(length));
    MPI_Bcast(bytes.data(), int(length), MPI_CHAR, root, MPI_COMM_WORLD);
  }
  void barrier() override { MPI_Barrier(MPI_COMM_WORLD); }
  [[noreturn]] void abort(int code) override {
    MPI_Abort(MPI_COMM_WORLD, code);
    std::exit(code);  // MPI_Abort does not return; the compiler does not know
  }

 private:
  static void finalise() {
    int finalised = 0;
    MPI_Finalized(&finalised);
    if (!finalised) MPI_Finalize();
  }
  int rank_ = 0, size_ = 1;
};

}  // namespace

bool built_with_mpi() { return true; }

std::shared_ptr<Communicator> mpi_world() { return std::make_shared<MpiWorld>(); }

}  // namespace deltatune::distributed
