#pragma once
// CPU parallelism: one thread count for our kernels (OpenMP) and OpenBLAS, from DELTATUNE_THREADS
// (default: all cores). Setting both together keeps them from oversubscribing the cores.
namespace deltatune {

int num_threads();
void set_num_threads(int n);
// OpenMP keeps its thread count per thread: one the library did not start (a server's request
// thread) has OpenMP's default until it adopts ours. Every model forward calls this; code that calls
// ops on a thread of its own before any forward calls it too.
void use_num_threads_on_this_thread();

}  // namespace deltatune
