// ctest: the C API never aborts on bad input; it returns an error code and a message.
//   ddit_c_api_test            checks that need no bundle
//   ddit_c_api_test BUNDLE     also opens BUNDLE (built with --backend aoti, verified), feeds it wrong inputs and
//                              runs real generations at its default steps, without and with the step cache
#include <ddit/ddit.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

static int failures = 0;

static void expect(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "FAIL: %s (last error: %s)\n", what, ddit_last_error());
    ++failures;
  }
}

static void expect_error(int rc, int code, const char* needle, const char* what) {
  expect(rc == code, what);
  expect(std::strstr(ddit_last_error(), needle) != nullptr, what);
}

static ddit_schedule policy(const char* name) {
  ddit_schedule s;
  std::memset(&s, 0, sizeof s);
  std::snprintf(s.policy, sizeof s.policy, "%s", name);
  s.tau = 0.01, s.eps = 0.4, s.warmup = 3, s.tail = 2, s.coarse_size = 2;
  return s;
}

int main(int argc, char** argv) {
  ddit_runtime* rt = nullptr;
  expect_error(ddit_open("/nonexistent/bundle", &rt), DDIT_ERR_BUNDLE, "not found", "missing bundle");
  expect(rt == nullptr, "no handle after a failed open");
  expect_error(ddit_open(nullptr, &rt), DDIT_ERR_ARGUMENT, "NULL", "null path");

  const int sizes[] = {1, 2, 4};
  ddit_scheduler* s = nullptr;
  ddit_schedule probe = policy("probe");
  expect_error(ddit_scheduler_create(&probe, 8, 8, sizes, 3, 10, &s), DDIT_ERR_UNSUPPORTED, "probe", "probe refused");
  ddit_schedule unknown = policy("nope");
  expect_error(ddit_scheduler_create(&unknown, 8, 8, sizes, 3, 10, &s), DDIT_ERR_ARGUMENT, "unknown policy",
               "unknown policy");
  ddit_schedule st = policy("static");
  const int eight[] = {1, 8, 1};
  st.static_sizes = eight, st.n_static = 3;
  expect_error(ddit_scheduler_create(&st, 8, 8, sizes, 3, 3, &s), DDIT_ERR_BUNDLE, "8", "a size not available");
  ddit_schedule ladder = policy("ladder");
  ladder.head = 1, ladder.n4 = 2, ladder.tail = 2;
  expect(ddit_scheduler_create(&ladder, 8, 8, sizes, 3, 8, &s) == DDIT_OK, "ladder scheduler");
  std::string got;
  for (int i = 0; i < 8; ++i) {
    ddit_step d;
    expect(ddit_scheduler_decide(s, i, nullptr, 1, 4, &d) == DDIT_OK, "ladder decides without latents");
    got += std::to_string(d.size);
  }
  expect(got == "14422211", "ladder sizes 1,4,4,2,2,2,1,1");
  ddit_scheduler_free(s);
  ddit_schedule carried = ladder;  // detail carry (API 3): 0 off, 1 fine; anything else is refused
  carried.carry = 1;
  expect(ddit_scheduler_create(&carried, 8, 8, sizes, 3, 8, &s) == DDIT_OK, "ladder with carry fine");
  ddit_scheduler_free(s);
  carried.carry = 2;
  expect_error(ddit_scheduler_create(&carried, 8, 8, sizes, 3, 8, &s), DDIT_ERR_ARGUMENT, "schedule.carry",
               "carry 2 refused");

  ddit_open_options oo;
  ddit_open_options_init(&oo);
  expect(oo.threads == 1 && oo.verify == 1 && oo.sizes == nullptr, "open option defaults");
  oo.threads = 0;
  expect_error(ddit_open_ex("/nonexistent/bundle", &oo, &rt), DDIT_ERR_ARGUMENT, "threads", "threads 0 refused");
  oo.threads = 1;

  if (argc > 1) {
    const int eight_only[] = {8};
    expect_error(ddit_open_sizes(argv[1], eight_only, 1, &rt), DDIT_ERR_BUNDLE, "no AOTInductor variant",
                 "a size the bundle lacks");
    oo.threads = 2;
    expect(ddit_open_ex(argv[1], &oo, &rt) == DDIT_OK, "open the bundle, verified");
    if (rt) {
      ddit_info info;
      expect(ddit_get_info(rt, &info) == DDIT_OK, "info");
      expect(info.verified == 1 && info.threads == 2, "info: verified, 2 threads");
      const int steps = info.default_steps;  // whatever the bundle's default is
      std::vector<float> states(size_t(info.text_len) * info.joint_dim, 0.1f), pooled(info.pooled_dim, 0.1f);
      std::vector<float> out(size_t(info.tokens) * info.channels);
      ddit_request q;
      std::memset(&q, 0, sizeof q);
      q.batch = 1, q.steps = 0, q.guidance = 3.5f, q.seed = 1;
      q.states = states.data(), q.states_len = states.size() - 1;  // one float short
      q.pooled = pooled.data(), q.pooled_len = pooled.size();
      expect_error(ddit_denoise(rt, &q, out.data(), out.size()), DDIT_ERR_ARGUMENT, "request.states",
                   "wrong embedding shape");
      q.states_len = states.size();
      q.pooled_len = pooled.size() + 1;
      expect_error(ddit_denoise(rt, &q, out.data(), out.size()), DDIT_ERR_ARGUMENT, "request.pooled",
                   "wrong pooled length");
      q.pooled_len = pooled.size();
      ddit_schedule bad = policy("static");
      std::vector<int> with_eight(size_t(steps), 1);
      with_eight.back() = 8;
      bad.static_sizes = with_eight.data(), bad.n_static = steps;
      q.schedule = &bad;
      expect_error(ddit_denoise(rt, &q, out.data(), out.size()), DDIT_ERR_BUNDLE, "not available",
                   "a schedule with a size the bundle lacks");
      ddit_schedule nan_tau = policy("ddit");
      nan_tau.tau = std::nan("");
      q.schedule = &nan_tau;
      expect_error(ddit_denoise(rt, &q, out.data(), out.size()), DDIT_ERR_ARGUMENT, "tau", "NaN tau");
      q.schedule = nullptr;
      q.steps = -1;
      expect_error(ddit_denoise(rt, &q, out.data(), out.size()), DDIT_ERR_ARGUMENT, "steps", "negative steps");
      q.steps = 0;
      q.batch = 0;
      expect_error(ddit_denoise(rt, &q, out.data(), out.size()), DDIT_ERR_ARGUMENT, "batch", "batch 0");
      q.batch = 1;
      states[3] = std::nanf("");
      expect_error(ddit_denoise(rt, &q, out.data(), out.size()), DDIT_ERR_ARGUMENT, "NaN", "NaN in the states");
      states[3] = 0.1f;

      // a real generation at the bundle's default steps
      expect(ddit_denoise(rt, &q, out.data(), out.size()) == DDIT_OK, "a good request runs");
      int n = 0;
      expect(ddit_trace_length(rt, &n) == DDIT_OK && n == steps, "one trace step per step");
      bool finite = true;
      for (float v : out) finite = finite && std::isfinite(v);
      expect(finite, "finite latents");
      for (int i = 0; i < n; ++i) {
        ddit_step st_i;
        expect(ddit_trace_step(rt, i, &st_i) == DDIT_OK, "trace step");
        expect(std::strcmp(st_i.kind, "model") == 0 ? st_i.flops > 0 : st_i.flops == 0, "FLOPs by kind");
      }
      size_t need_json = 0;
      expect(ddit_trace_json(rt, nullptr, 0, &need_json) == DDIT_OK && need_json > 1, "trace JSON size");
      std::string json(need_json, '\0');
      expect(ddit_trace_json(rt, &json[0], json.size(), &need_json) == DDIT_OK, "trace JSON");
      expect(json.find("\"ddit-trace/1\"") != std::string::npos, "trace format");
      expect(json.find("\"verified\": true") != std::string::npos, "the trace says verified");

      // the same with the step cache: one computed step in two after the first
      ddit_cache cache;
      expect(ddit_cache_defaults(rt, &cache) == DDIT_OK, "cache defaults");
      std::snprintf(cache.mode, sizeof cache.mode, "taylor");
      cache.interval = 2, cache.order = 1, cache.warmup = 1, cache.tail = 1, cache.threshold = 0;
      cache.plan = nullptr, cache.n_plan = 0;
      q.cache = &cache;
      std::vector<float> cached_out(out.size());
      expect(ddit_denoise(rt, &q, cached_out.data(), cached_out.size()) == DDIT_OK, "a cached run");
      expect(ddit_trace_length(rt, &n) == DDIT_OK && n == steps, "cached: one trace step per step");
      int n_cached = 0;
      for (int i = 0; i < n; ++i) {
        ddit_step st_i;
        ddit_trace_step(rt, i, &st_i);
        const bool want_cached = i < steps - 1 && i % 2 == 1;  // 0, 2, 4, ... and the last step compute
        expect((std::strcmp(st_i.kind, "cached") == 0) == want_cached, "cached steps where the rule says");
        n_cached += want_cached;
      }
      expect(steps < 3 || n_cached > 0, "some steps were cached");
      finite = true;
      for (float v : cached_out) finite = finite && std::isfinite(v);
      expect(finite, "cached: finite latents");
      cache.order = 3;
      expect_error(ddit_denoise(rt, &q, out.data(), out.size()), DDIT_ERR_ARGUMENT, "order", "cache order 3");
      ddit_close(rt);
    }
  }
  std::printf("%s (%d failure(s))\n", failures ? "FAILED" : "ok", failures);
  return failures ? 1 : 0;
}
