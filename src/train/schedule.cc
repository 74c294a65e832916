#include <algorithm>
#include <cmath>
#include <numbers>

#include "deltatune/error.h"
#include "deltatune/optim.h"

namespace deltatune {

// In Kind order.
const std::vector<std::string>& LrSchedule::names() {
  static const std::vector<std::string> names{"constant", "constant_with_warmup", "linear", "cosine"};
  return names;
}

LrSchedule::LrSchedule(Kind kind, int64_t num_warmup_steps, int64_t num_training_steps, double num_cycles)
    : kind_(kind),
      num_warmup_steps_(num_warmup_steps),
      num_training_steps_(num_training_steps),
      num_cycles_(num_cycles) {
  if (num_warmup_steps < 0)
    throw ConfigError("lr schedule '" + name() + "': num_warmup_steps must be >= 0, got " +
                      std::to_string(num_warmup_steps));
  if (num_training_steps < 0)
    throw ConfigError("lr schedule '" + name() + "': num_training_steps must be >= 0, got " +
                      std::to_string(num_training_steps));
  if (!std::isfinite(num_cycles))
    throw ConfigError("lr schedule '" + name() + "': num_cycles must be finite");
}

LrSchedule LrSchedule::from_name(std::string_view name, int64_t num_warmup_steps,
                                 int64_t num_training_steps) {
  const std::vector<std::string>& all = names();
  for (size_t i = 0; i < all.size(); ++i)
    if (all[i] == name) return LrSchedule(Kind(i), num_warmup_steps, num_training_steps);
  std::string supported;
  for (const std::string& n : all) supported += (supported.empty() ? "" : ", ") + n;
  throw ConfigError("unknown lr schedule '" + std::string(name) + "' (supported: " + supported + ")");
}

const std::string& LrSchedule::name() const { return names()[size_t(kind_)]; }

// transformers' lr lambdas, with the same double arithmetic in the same order.
double LrSchedule::multiplier(int64_t step) const {
  if (step < 0) throw Error("lr schedule '" + name() + "': negative step " + std::to_string(step));
  if (kind_ == Kind::Constant) return 1.0;
  if (step < num_warmup_steps_) return double(step) / double(std::max<int64_t>(1, num_warmup_steps_));
  const double remaining_span = double(std::max<int64_t>(1, num_training_steps_ - num_warmup_steps_));
  switch (kind_) {
    case Kind::ConstantWithWarmup:
      return 1.0;
    case Kind::Linear:
      return std::max(0.0, double(num_training_steps_ - step) / remaining_span);
    case Kind::Cosine: {
      const double progress = double(step - num_warmup_steps_) / remaining_span;
      return std::max(0.0, 0.5 * (1.0 + std::cos(std::numbers::pi * num_cycles_ * 2.0 * progress)));
    }
    case Kind::Constant:
      break;
  }
  return 1.0;
}

}  // namespace deltatune
