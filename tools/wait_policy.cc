#include "wait_policy.h"

#include <unistd.h>

#include <cstdlib>

namespace deltatune::cli {

void choose_openmp_wait_policy(char** argv) {
  if (std::getenv("OMP_WAIT_POLICY") || std::getenv("GOMP_SPINCOUNT")) return;
  if (setenv("OMP_WAIT_POLICY", "passive", 1) != 0) return;
  execv("/proc/self/exe", argv);  // returns only on failure: run with the runtime's default policy
}

}  // namespace deltatune::cli
