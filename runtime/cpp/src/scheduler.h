// The DDiT scheduler, ported from ddit_export/schedule (ddit.py, static.py): latents in, a patch size out.
// Pure C++ (no torch), so it builds fast and is checked decision by decision against the Python scheduler.
#pragma once
#include <deque>
#include <map>
#include <string>
#include <vector>

namespace ddit {

struct ScheduleSettings {
  std::string policy = "ddit";  // ddit, ladder, coarse-first, static
  double tau = 0.001, eps = 0.4;
  int warmup = 3;
  bool same_size_window = false;
  int head = 0, n4 = 0, tail = 4;
  int coarse_steps = 0, coarse_size = 2;
  std::vector<int> static_sizes;
  std::string video_std = "clip";  // video grids: the patch std across all token frames ("clip") or per frame
  std::string carry = "off";  // detail carry (carry.cpp): "off" or "fine"; the scheduler's decisions ignore it
};

struct Decision {
  int size = 1;
  std::map<int, double> sigmas;  // candidate size -> sigma_k (rule steps only)
  std::string reason;            // warmup, rule, hold, static
};

// Delta^3 of the last four latents (oldest first), in double: z[-1] - 3 z[-2] + 3 z[-3] - z[-4].
std::vector<double> third_difference(const std::deque<std::vector<float>>& h);
// The eps-percentile over k x k patches of the per-patch std (numpy's std and linear percentile), per sample. A
// video grid (gf token frames > 1, or frame_std): "clip" takes each k x k patch across all gf frames (one value per
// (gh/k, gw/k) patch), frame_std each frame's patch alone (one per (gf, gh/k, gw/k)), as ddit.py patch_std.
std::vector<double> sigma_at(const std::vector<double>& d, int batch, int gh, int gw, int channels, int k, double eps,
                             int gf = 1, bool frame_std = false);
// ladder_sizes of schedule/static.py.
std::vector<int> ladder_sizes(int steps, int head, int n4, int tail);

class Scheduler {
 public:
  // grid: fine token grid, gf token frames (1: an image); sizes: the sizes loaded (those dividing the spatial grid
  // are candidates; frames are never merged); steps of the run.
  Scheduler(const ScheduleSettings& s, int gh, int gw, const std::vector<int>& sizes, int steps, int gf = 1);
  // Decide step `step` from the current latents (batch x gf*gh*gw x channels), appended to the history first.
  Decision decide(int step, const float* latents, int batch, int channels);
  bool needs_history() const { return static_.empty(); }

 private:
  ScheduleSettings s_;
  int gh_, gw_, gf_;
  std::vector<int> sizes_;   // candidate sizes (divide the grid), sorted
  std::vector<int> static_;  // the per-step sizes of a static policy (empty: the rule)
  std::vector<int> taken_;
  std::deque<std::vector<float>> history_;
};

}  // namespace ddit
