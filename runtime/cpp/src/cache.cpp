#include "cache.h"

#include <cmath>

#include "error.h"

namespace ddit {

bool StepCache::should_compute(int step, double sigma, int size) const {
  if (s_.mode == "plan") return s_.plan[step] != 0;
  if (points_.empty() || step < s_.warmup || step >= steps_ - s_.tail) return true;
  if (s_.on_switch && size != last_size_) return true;
  if (step - last_step_ >= s_.interval) return true;
  if (s_.threshold > 0 && has_error_) {
    const double d = std::abs(sigma - points_.back().first);
    return dist_ > 0 && err_ * std::pow(d / dist_, s_.order + 1) >= s_.threshold;
  }
  return false;
}

at::Tensor StepCache::predict(double sigma) const {
  // Newton's divided differences, in place (coef[i] = f[x_{i-j}..x_i]), the same tensor ops as cache.py so the
  // float32 results match it bit for bit
  const size_t n = points_.size();
  std::vector<double> xs;
  std::vector<at::Tensor> coef;
  for (const auto& p : points_) {
    xs.push_back(p.first);
    coef.push_back(p.second.to(at::kFloat));
  }
  for (size_t j = 1; j < n; ++j)
    for (size_t i = n - 1; i >= j; --i) coef[i] = (coef[i] - coef[i - 1]) / (xs[i] - xs[i - j]);
  at::Tensor out = coef[n - 1];
  for (int i = int(n) - 2; i >= 0; --i) out = coef[i] + (sigma - xs[i]) * out;
  return out.to(points_.back().second.scalar_type());
}

void StepCache::update(int step, double sigma, const at::Tensor& v, int size) {
  if (s_.on_switch && size != last_size_) {  // a new size restarts the history (cache.py)
    points_.clear();
    has_error_ = false;
  }
  if (s_.threshold > 0 && int(points_.size()) == s_.order + 1) {
    const at::Tensor p = predict(sigma);
    const at::Tensor vf = v.to(at::kFloat);
    err_ = ((vf - p.to(at::kFloat)).norm() / vf.norm().clamp_min(1e-12)).item<double>();
    dist_ = std::abs(sigma - points_.back().first);
    has_error_ = true;
  }
  points_.emplace_back(sigma, v.detach().clone());
  if (int(points_.size()) > s_.order + 1) points_.pop_front();
  last_step_ = step;
  last_size_ = size;
}

}  // namespace ddit
