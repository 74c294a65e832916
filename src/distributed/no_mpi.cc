// A build without MPI: world() is always a single process (CMake drops this file when MPI is found).
#include "deltatune/error.h"
#include "distributed/mpi_world.h"

namespace deltatune::distributed {

bool built_with_mpi() { return false; }

std::shared_ptr<Communicator> mpi_world() {
  throw Error("this deltatune was built without MPI (install libopenmpi-dev and rebuild)");
}

}  // namespace deltatune::distributed
