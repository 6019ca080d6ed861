// The output-level step cache (ddit_export/runtime/cache.py, ported): TaylorSeer on the model's velocity. Cached
// steps extrapolate the last computed velocities with a Newton polynomial in sigma instead of running the model.
#pragma once
#include <ATen/ATen.h>

#include <deque>
#include <string>
#include <utility>
#include <vector>

#include "cache_settings.h"

namespace ddit {

class StepCache {
 public:
  StepCache(const CacheSettings& s, int steps) : s_(s), steps_(steps) {}
  bool should_compute(int step, double sigma, int size) const;  // size: the policy's patch size this step
  at::Tensor predict(double sigma) const;
  void update(int step, double sigma, const at::Tensor& v, int size);

 private:
  CacheSettings s_;
  int steps_;
  std::deque<std::pair<double, at::Tensor>> points_;  // (sigma, velocity) of the last order + 1 computed steps
  int last_step_ = -1;
  int last_size_ = 0;  // the patch size of the last computed step (on_switch)
  bool has_error_ = false;
  double err_ = 0.0, dist_ = 0.0;  // the measured relative extrapolation error and its sigma distance
};

}  // namespace ddit
