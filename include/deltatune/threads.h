#pragma once
// CPU parallelism: one thread count for our kernels (OpenMP) and OpenBLAS, from DELTATUNE_THREADS
// (default: all cores). Setting both together keeps them from oversubscribing the cores.
namespace deltatune {

int num_threads();
void set_num_threads(int n);

}  // namespace deltatune
