// The current forward context is thread-local: each thread's calls see their own, and OpenMP workers
// never run hooks (they only run inside one op's kernel).
#include "deltatune/forward_context.h"

namespace deltatune {
namespace {
thread_local ForwardContext* g_current = nullptr;
}  // namespace

ForwardContext& ForwardContext::current() {
  if (g_current) return *g_current;
  thread_local ForwardContext outside_forward;
  return outside_forward;
}

ForwardScope::ForwardScope(ForwardContext& context) : previous_(g_current) { g_current = &context; }

ForwardScope::~ForwardScope() { g_current = previous_; }

}  // namespace deltatune
