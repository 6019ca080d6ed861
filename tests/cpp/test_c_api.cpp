// ctest: the C API never aborts on bad input; it returns an error code and a message.
//   ddit_c_api_test            checks that need no bundle
//   ddit_c_api_test BUNDLE     also opens BUNDLE (built with --backend aoti) and feeds it wrong inputs
#include <ddit/ddit.h>

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

  if (argc > 1) {
    const int eight_only[] = {8};
    expect_error(ddit_open_sizes(argv[1], eight_only, 1, &rt), DDIT_ERR_BUNDLE, "no AOTInductor variant",
                 "a size the bundle lacks");
    expect(ddit_open(argv[1], &rt) == DDIT_OK, "open the bundle");
    if (rt) {
      ddit_info info;
      expect(ddit_get_info(rt, &info) == DDIT_OK, "info");
      std::vector<float> states(size_t(info.text_len) * info.joint_dim), pooled(info.pooled_dim);
      std::vector<float> out(size_t(info.tokens) * info.channels);
      ddit_request q;
      std::memset(&q, 0, sizeof q);
      q.batch = 1, q.steps = 4;
      q.states = states.data(), q.states_len = states.size() - 1;  // one float short
      q.pooled = pooled.data(), q.pooled_len = pooled.size();
      expect_error(ddit_denoise(rt, &q, out.data(), out.size()), DDIT_ERR_ARGUMENT, "request.states",
                   "wrong embedding shape");
      q.states_len = states.size();
      ddit_schedule bad = policy("static");
      const int four[] = {1, 1, 1, 8};
      bad.static_sizes = four, bad.n_static = 4;
      q.schedule = &bad;
      expect_error(ddit_denoise(rt, &q, out.data(), out.size()), DDIT_ERR_BUNDLE, "not available",
                   "a schedule with a size the bundle lacks");
      q.schedule = nullptr;
      expect(ddit_denoise(rt, &q, out.data(), out.size()) == DDIT_OK, "a good request runs");
      expect_error(ddit_trace_step(rt, 99, nullptr), DDIT_ERR_ARGUMENT, "NULL", "null out");
      ddit_close(rt);
    }
  }
  std::printf("%s (%d failure(s))\n", failures ? "FAILED" : "ok", failures);
  return failures ? 1 : 0;
}
