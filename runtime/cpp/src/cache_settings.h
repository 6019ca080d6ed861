// The step cache's settings (settings.CacheSettings) apart from the cache itself: the bundle reader (no torch)
// parses and checks the manifest's cache profile with them.
#pragma once
#include <string>
#include <vector>

namespace ddit {

struct CacheSettings {  // settings.CacheSettings; threshold 0 = none (Python's None)
  std::string mode = "off";
  int interval = 4, order = 1, warmup = 3, tail = 1;
  double threshold = 0.0;
  std::vector<int> plan;  // mode "plan" only
  bool on_switch = false;  // Python's `switch`: also compute the first step after a patch-size change (taylor)

  bool enabled() const { return mode == "plan" || (mode == "taylor" && (interval > 1 || threshold > 0)); }
  // CacheSettings.__post_init__'s checks, and a plan of `steps` entries (steps < 0: any length); throws
  // argument_error, one message
  void check(int steps) const;
};

}  // namespace ddit
