#include "scheduler.h"

#include <algorithm>
#include <cmath>
#include <set>
#include <sstream>

#include "error.h"

namespace ddit {

std::vector<double> third_difference(const std::deque<std::vector<float>>& h) {
  const size_t n = h.size();
  if (n < 4) throw argument_error("third difference needs 4 latents");
  const auto &z0 = h[n - 4], &z1 = h[n - 3], &z2 = h[n - 2], &z3 = h[n - 1];
  std::vector<double> d(z0.size());
  for (size_t i = 0; i < d.size(); ++i)
    d[i] = double(z3[i]) - 3.0 * double(z2[i]) + 3.0 * double(z1[i]) - double(z0[i]);
  return d;
}

// numpy's percentile, method "linear", including its lerp that is exact at both ends.
static double percentile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  const double idx = q * double(v.size() - 1);
  const size_t lo = size_t(std::floor(idx));
  const size_t hi = std::min(lo + 1, v.size() - 1);
  const double t = idx - double(lo), a = v[lo], b = v[hi], diff = b - a;
  return t >= 0.5 ? b - diff * (1.0 - t) : a + diff * t;
}

std::vector<double> sigma_at(const std::vector<double>& d, int batch, int gh, int gw, int channels, int k,
                             double eps, int gf, bool frame_std) {
  const int ph = gh / k, pw = gw / k;
  const int groups = frame_std ? gf : 1, span = frame_std ? 1 : gf;  // patches per sample: groups * ph * pw
  const int per = span * k * k * channels;
  std::vector<double> out(batch), stds(size_t(groups) * ph * pw), vals(per);
  for (int b = 0; b < batch; ++b) {
    for (int g = 0; g < groups; ++g)
      for (int py = 0; py < ph; ++py)
        for (int px = 0; px < pw; ++px) {
          int n = 0;
          for (int f = g * span; f < (g + 1) * span; ++f)
            for (int dy = 0; dy < k; ++dy)
              for (int dx = 0; dx < k; ++dx) {
                const size_t tok = (size_t(f) * gh + size_t(py * k + dy)) * gw + (px * k + dx);
                const double* src = &d[(size_t(b) * gf * gh * gw + tok) * channels];
                for (int c = 0; c < channels; ++c) vals[n++] = src[c];
              }
          double mean = 0;
          for (double x : vals) mean += x;
          mean /= per;
          double var = 0;
          for (double x : vals) var += (x - mean) * (x - mean);
          stds[(size_t(g) * ph + py) * pw + px] = std::sqrt(var / per);
        }
    out[b] = percentile(stds, eps);
  }
  return out;
}

std::vector<int> ladder_sizes(int steps, int head, int n4, int tail) {
  const int n2 = steps - head - n4 - tail;
  if (std::min({head, n4, tail, n2}) < 0) {
    std::ostringstream m;
    m << "ladder head " << head << " + n4 " << n4 << " + tail " << tail << " exceed the " << steps << " steps";
    throw argument_error(m.str());
  }
  std::vector<int> out(head, 1);
  out.insert(out.end(), n4, 4);
  out.insert(out.end(), n2, 2);
  out.insert(out.end(), tail, 1);
  return out;
}

Scheduler::Scheduler(const ScheduleSettings& s, int gh, int gw, const std::vector<int>& sizes, int steps, int gf)
    : s_(s), gh_(gh), gw_(gw), gf_(gf) {
  if (gf < 1 || gh < 1 || gw < 1) throw argument_error("the token grid must be non-empty");
  if (s.video_std != "clip" && s.video_std != "frame")
    throw argument_error("schedule.video_std must be clip or frame, got '" + s.video_std + "'");
  for (int k : sizes)
    if (k >= 1 && gh % k == 0 && gw % k == 0) sizes_.push_back(k);
  std::sort(sizes_.begin(), sizes_.end());
  if (steps < 1) throw argument_error("steps must be >= 1");
  if (s.policy == "probe")
    throw Error(DDIT_ERR_UNSUPPORTED, "the probe policy is not ported to the C++ runtime; use ddit, ladder, "
                                      "coarse-first or static (or the Python runtime for probe)");
  if (s.policy == "ddit") {
    if (s.warmup < 3) throw argument_error("warmup must be >= 3 (the third-order difference needs four latents)");
    if (!(s.tau > 0 && std::isfinite(s.tau))) {
      std::ostringstream m;
      m << "schedule.tau must be > 0 and finite, got " << s.tau;
      throw argument_error(m.str());
    }
    if (!(s.eps > 0 && s.eps < 1)) {
      std::ostringstream m;
      m << "schedule.eps must be in (0, 1), got " << s.eps;
      throw argument_error(m.str());
    }
    if (steps < s.warmup + 1) throw argument_error("steps must exceed the warm-up for the ddit policy");
    return;
  }
  if (s.policy == "ladder") {
    static_ = ladder_sizes(steps, s.head, s.n4, s.tail);
  } else if (s.policy == "coarse-first") {
    if (s.coarse_steps < 0 || s.coarse_steps > steps) throw argument_error("coarse-first steps must be in 0..steps");
    static_.assign(s.coarse_steps, s.coarse_size);
    static_.insert(static_.end(), steps - s.coarse_steps, 1);
  } else if (s.policy == "static") {
    if (int(s.static_sizes.size()) != steps) {
      std::ostringstream m;
      m << "static schedule has " << s.static_sizes.size() << " sizes for " << steps << " steps";
      throw argument_error(m.str());
    }
    static_ = s.static_sizes;
  } else {
    throw argument_error("unknown policy '" + s.policy + "' (ddit, ladder, coarse-first, static)");
  }
  std::set<int> bad;
  for (int k : static_)
    if (std::find(sizes_.begin(), sizes_.end(), k) == sizes_.end()) bad.insert(k);
  if (!bad.empty()) {
    std::ostringstream m;
    m << s.policy << " schedule uses size(s)";
    for (int k : bad) m << " " << k;
    m << " not available (loaded sizes dividing the " << gh << "x" << gw << " grid:";
    for (int k : sizes_) m << " " << k;
    m << ")";
    throw bundle_error(m.str());
  }
}

Decision Scheduler::decide(int step, const float* latents, int batch, int channels) {
  Decision d;
  if (!static_.empty()) {
    if (step < 0 || step >= int(static_.size())) throw argument_error("step out of range of the static schedule");
    d.size = static_[step];
    d.reason = "static";
  } else {
    const size_t n = size_t(batch) * gf_ * gh_ * gw_ * channels;
    history_.emplace_back(latents, latents + n);
    if (history_.size() > 4) history_.pop_front();
    const size_t m = taken_.size();
    if (step < s_.warmup || history_.size() < 4) {
      d.size = 1;
      d.reason = "warmup";
    } else if (s_.same_size_window && m >= 2 &&
               !(taken_[m - 1] == taken_[m - 2] && (m < 3 || taken_[m - 2] == taken_[m - 3]))) {
      d.size = taken_[m - 1];  // the window mixes sizes: keep going
      d.reason = "hold";
    } else {
      const std::vector<double> d3 = third_difference(history_);
      d.reason = "rule";
      for (int k : sizes_) {
        if (k == 1) continue;
        const auto per = sigma_at(d3, batch, gh_, gw_, channels, k, s_.eps, gf_, s_.video_std == "frame");
        const double sk = *std::max_element(per.begin(), per.end());
        d.sigmas[k] = sk;
        if (sk < s_.tau) d.size = std::max(d.size, k);
      }
    }
  }
  taken_.push_back(d.size);
  return d;
}

}  // namespace ddit
