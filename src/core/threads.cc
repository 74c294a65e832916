#include "deltatune/threads.h"

#include <omp.h>

#include <cstdlib>
#include <thread>

extern "C" void openblas_set_num_threads(int);

namespace deltatune {
namespace {
int initial_threads() {
  if (const char* env = std::getenv("DELTATUNE_THREADS")) {
    int n = std::atoi(env);
    if (n > 0) return n;
  }
  unsigned hw = std::thread::hardware_concurrency();
  return hw ? int(hw) : 1;
}

int& current() {
  static int n = [] {
    int v = initial_threads();
    omp_set_num_threads(v);
    openblas_set_num_threads(v);
    return v;
  }();
  return n;
}
}  // namespace

int num_threads() { return current(); }

void use_num_threads_on_this_thread() {
  const int n = current();
  if (omp_get_max_threads() != n) omp_set_num_threads(n);
}

void set_num_threads(int n) {
  if (n < 1) n = 1;
  current() = n;
  omp_set_num_threads(n);
  openblas_set_num_threads(n);
}

}  // namespace deltatune
