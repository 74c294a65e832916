#pragma once
// MPI's world communicator (src/distributed/mpi_communicator.cc, compiled when CMake finds MPI).
#include <memory>

#include "deltatune/distributed.h"

namespace deltatune::distributed {
// Initialises MPI (once; finalised at exit) and returns MPI_COMM_WORLD. Throws Error in a build
// without MPI.
std::shared_ptr<Communicator> mpi_world();
}  // namespace deltatune::distributed
