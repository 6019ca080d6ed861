#include "cache_settings.h"

#include <cmath>
#include <sstream>

#include "error.h"

namespace ddit {

void CacheSettings::check(int steps) const {
  std::ostringstream m;
  if (mode != "off" && mode != "taylor" && mode != "plan")
    m << "cache mode must be one of off, taylor, plan, got '" << mode << "'";
  else if (interval < 1)
    m << "cache interval must be >= 1, got " << interval;
  else if (order < 0 || order > 2)
    m << "cache order must be 0, 1 or 2, got " << order;
  else if (warmup < 1 || tail < 0)
    m << "cache warm-up must be >= 1 and tail >= 0, got " << warmup << " and " << tail;
  else if (!(threshold >= 0) || std::isinf(threshold))
    m << "cache threshold must be > 0 (or 0 for none), got " << threshold;
  else if (on_switch && mode == "plan")
    m << "the cache's switch refresh goes with mode 'taylor' (a plan lists every step)";
  else if ((mode == "plan") != !plan.empty())
    m << "a cache plan goes with mode 'plan' (and mode 'plan' needs a plan)";
  else if (mode == "plan") {
    bool ok = plan[0] == 1;
    for (int p : plan) ok = ok && (p == 0 || p == 1);
    if (!ok)
      m << "a cache plan is 1 (computed) / 0 (cached) per step, starting with 1";
    else if (steps >= 0 && int(plan.size()) != steps)
      m << "the cache plan has " << plan.size() << " entries for " << steps << " steps";
  }
  if (!m.str().empty()) throw argument_error(m.str());
}

}  // namespace ddit
