#pragma once
// OpenMP's idle threads busy-wait by default (libgomp spins for a while before sleeping). On a
// machine whose cores anything else uses, that spinning steals the cores our other threads need:
// measured up to 6x slower. libgomp reads OMP_WAIT_POLICY once, when it loads, before main() runs,
// so the only way to choose the policy for ourselves is to set it and start the program again.

namespace deltatune::cli {

// If the user chose no wait policy (OMP_WAIT_POLICY, GOMP_SPINCOUNT unset), sets
// OMP_WAIT_POLICY=passive and re-executes this program with the same arguments. Returns only when
// the policy is already chosen or re-executing failed (then the run goes on as it is).
void choose_openmp_wait_policy(char** argv);

}  // namespace deltatune::cli
