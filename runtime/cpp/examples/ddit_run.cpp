// ddit-run: run a generation from saved text embeddings through the ddit C API; writes the final latents (.npy)
// and the per-step trace (JSON). A small program to copy: everything it does goes through include/ddit/ddit.h.
//
//   ddit-run BUNDLE --states states.npy --pooled pooled.npy [--latents init.npy | --seed N] [--steps N]
//            [--policy ddit|ladder|coarse-first|static] [--tau T] [--eps E] [--schedule 1,1,2,...]
//            [--coarse-first K:SIZE] [--ladder HEAD,N4,TAIL] [--sizes 1,2,4] [--guidance G]
//            [--out latents.npy] [--trace trace.json] [--repeat N] [--bench-steps N]
//            [--threads N] [--no-verify] [--cache taylor|off] [--cache-interval N] [--cache-order N]
//            [--cache-warmup N] [--cache-tail N] [--cache-threshold X]
//
// --bench-steps N: instead of a generation, time N calls of every loaded size (sizes interleaved) and the switch
// cost (a call of size a right after size b vs after size a); prints JSON. Peak RSS (VmHWM) is printed last.
#include <ddit/ddit.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

static int fail(const std::string& m) {
  std::fprintf(stderr, "error: %s\n", m.c_str());
  return 2;
}

// A minimal .npy reader/writer: little-endian float32, C order (what numpy.save writes for float32 arrays).
static bool read_npy(const std::string& path, std::vector<float>& data, std::string& err) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return err = "cannot open " + path, false;
  char magic[8];
  f.read(magic, 8);
  if (!f || std::memcmp(magic, "\x93NUMPY", 6) != 0) return err = path + " is not a .npy file", false;
  uint32_t hlen = 0;
  if (magic[6] == 1) {
    uint16_t h;
    f.read(reinterpret_cast<char*>(&h), 2);
    hlen = h;
  } else {
    f.read(reinterpret_cast<char*>(&hlen), 4);
  }
  std::string header(hlen, ' ');
  f.read(&header[0], hlen);
  if (header.find("'<f4'") == std::string::npos) return err = path + ": expected float32 ('<f4')", false;
  if (header.find("'fortran_order': True") != std::string::npos) return err = path + ": expected C order", false;
  const auto a = header.find('('), b = header.find(')');
  size_t n = 1;
  std::stringstream dims(header.substr(a + 1, b - a - 1));
  for (std::string d; std::getline(dims, d, ',');)
    if (d.find_first_not_of(' ') != std::string::npos) n *= std::stoul(d);
  data.resize(n);
  f.read(reinterpret_cast<char*>(data.data()), std::streamsize(n * sizeof(float)));
  if (!f) return err = path + " is truncated", false;
  return true;
}

static void write_npy(const std::string& path, const std::vector<float>& data, const std::vector<int>& shape) {
  std::string dims;
  for (int d : shape) dims += std::to_string(d) + ", ";
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + dims + "), }";
  header.append(63 - (10 + header.size()) % 64, ' ');
  header += '\n';
  std::ofstream f(path, std::ios::binary);
  f.write("\x93NUMPY\x01\x00", 8);
  const uint16_t hlen = uint16_t(header.size());
  f.write(reinterpret_cast<const char*>(&hlen), 2);
  f << header;
  f.write(reinterpret_cast<const char*>(data.data()), std::streamsize(data.size() * sizeof(float)));
}

static std::vector<int> ints(const std::string& s) {
  std::vector<int> out;
  std::stringstream ss(s);
  for (std::string x; std::getline(ss, x, ',');) out.push_back(std::stoi(x));
  return out;
}

static long peak_rss_kb() {
  std::ifstream f("/proc/self/status");
  for (std::string line; std::getline(f, line);)
    if (line.rfind("VmHWM:", 0) == 0) return std::atol(line.c_str() + 6);
  return -1;
}

static double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

int main(int argc, char** argv) {
  if (argc < 2 || std::string(argv[1]) == "--help") {
    std::printf("usage: ddit-run BUNDLE --states S.npy --pooled P.npy [options] (see the source's header)\n");
    return argc < 2 ? 2 : 0;
  }
  std::map<std::string, std::string> opt;
  for (int i = 2; i < argc; ++i) {
    std::string k = argv[i];
    if (k == "--no-verify") {  // the one flag without a value
      opt["no-verify"] = "1";
      continue;
    }
    if (k.rfind("--", 0) != 0 || i + 1 >= argc) return fail("expected --option VALUE, got " + k);
    opt[k.substr(2)] = argv[++i];
  }
  std::vector<int> sizes = opt.count("sizes") ? ints(opt["sizes"]) : std::vector<int>{};
  ddit_open_options oo;
  ddit_open_options_init(&oo);
  oo.sizes = sizes.data(), oo.n_sizes = int(sizes.size());
  if (opt.count("threads")) oo.threads = std::stoi(opt["threads"]);
  if (opt.count("no-verify")) oo.verify = 0;
  ddit_runtime* rt = nullptr;
  if (ddit_open_ex(argv[1], &oo, &rt) != DDIT_OK) return fail(ddit_last_error());
  ddit_info info;
  ddit_get_info(rt, &info);
  std::vector<float> states, pooled, init;
  std::string err;
  if (!opt.count("states") || !opt.count("pooled")) return fail("give --states and --pooled (.npy, float32)");
  if (!read_npy(opt["states"], states, err) || !read_npy(opt["pooled"], pooled, err)) return fail(err);
  const int batch = int(pooled.size() / std::max(info.pooled_dim, 1));
  if (opt.count("latents") && !read_npy(opt["latents"], init, err)) return fail(err);

  if (opt.count("bench-steps")) {  // per-size step time and switching cost
    const int n = std::stoi(opt["bench-steps"]);
    std::vector<float> x(size_t(batch) * info.tokens * info.channels, 0.5f), v(x.size());
    std::map<int, std::vector<double>> same, switched;
    auto call = [&](int k) {
      const auto t0 = std::chrono::steady_clock::now();
      if (ddit_run_variant(rt, k, batch, x.data(), states.data(), pooled.data(), 0.5f, 3.5f, v.data()) != DDIT_OK)
        std::exit(fail(ddit_last_error()));
      return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    };
    for (int k = 0; k < info.n_sizes; ++k) call(info.sizes[k]), call(info.sizes[k]);  // warm-up
    for (int r = 0; r < n; ++r)
      for (int a = 0; a < info.n_sizes; ++a) {
        const int k = info.sizes[a], other = info.sizes[(a + 1) % info.n_sizes];
        call(k);
        same[k].push_back(call(k));      // k after k
        call(other);
        switched[k].push_back(call(k));  // k right after another size
      }
    std::printf("{\"batch\": %d, \"repeats\": %d, \"sizes\": {", batch, n);
    for (int a = 0; a < info.n_sizes; ++a) {
      const int k = info.sizes[a];
      std::printf("%s\"%d\": {\"step_s\": %.6f, \"after_switch_s\": %.6f}", a ? ", " : "", k, median(same[k]),
                  median(switched[k]));
    }
    std::printf("}, \"peak_rss_kb\": %ld}\n", peak_rss_kb());
    ddit_close(rt);
    return 0;
  }

  ddit_schedule sched;
  ddit_schedule_defaults(rt, &sched);
  std::vector<int> static_sizes;
  if (opt.count("policy")) std::snprintf(sched.policy, sizeof sched.policy, "%s", opt["policy"].c_str());
  if (opt.count("tau")) sched.tau = std::stod(opt["tau"]);
  if (opt.count("eps")) sched.eps = std::stod(opt["eps"]);
  if (opt.count("schedule")) {
    static_sizes = ints(opt["schedule"]);
    std::snprintf(sched.policy, sizeof sched.policy, "static");
    sched.static_sizes = static_sizes.data();
    sched.n_static = int(static_sizes.size());
  }
  if (opt.count("coarse-first")) {
    std::string spec = opt["coarse-first"];
    std::replace(spec.begin(), spec.end(), ':', ',');
    auto v = ints(spec);
    std::snprintf(sched.policy, sizeof sched.policy, "coarse-first");
    sched.coarse_steps = v[0];
    sched.coarse_size = v.size() > 1 ? v[1] : 2;
  }
  if (opt.count("ladder")) {
    auto v = ints(opt["ladder"]);
    if (v.size() != 3) return fail("--ladder takes HEAD,N4,TAIL");
    std::snprintf(sched.policy, sizeof sched.policy, "ladder");
    sched.head = v[0], sched.n4 = v[1], sched.tail = v[2];
  }
  ddit_cache cache;  // the bundle's cache profile, overridden by --cache*
  ddit_cache_defaults(rt, &cache);
  if (opt.count("cache")) std::snprintf(cache.mode, sizeof cache.mode, "%s", opt["cache"].c_str());
  if (opt.count("cache-interval")) cache.interval = std::stoi(opt["cache-interval"]);
  if (opt.count("cache-order")) cache.order = std::stoi(opt["cache-order"]);
  if (opt.count("cache-warmup")) cache.warmup = std::stoi(opt["cache-warmup"]);
  if (opt.count("cache-tail")) cache.tail = std::stoi(opt["cache-tail"]);
  if (opt.count("cache-threshold")) cache.threshold = std::stod(opt["cache-threshold"]);
  if (opt.count("cache") && opt["cache"] != "plan") cache.plan = nullptr, cache.n_plan = 0;
  ddit_request req{};
  req.cache = &cache;
  req.batch = batch;
  req.states = states.data(), req.states_len = states.size();
  req.pooled = pooled.data(), req.pooled_len = pooled.size();
  req.steps = opt.count("steps") ? std::stoi(opt["steps"]) : 0;
  req.guidance = opt.count("guidance") ? std::stof(opt["guidance"]) : 3.5f;
  req.seed = opt.count("seed") ? std::stoll(opt["seed"]) : 0;
  if (!init.empty()) req.init_latents = init.data(), req.init_len = init.size();
  req.schedule = &sched;
  std::vector<float> out(size_t(batch) * info.tokens * info.channels);
  const int repeat = opt.count("repeat") ? std::stoi(opt["repeat"]) : 1;
  std::vector<double> secs;
  for (int r = 0; r < repeat; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    if (ddit_denoise(rt, &req, out.data(), out.size()) != DDIT_OK) return fail(ddit_last_error());
    secs.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  if (opt.count("out")) write_npy(opt["out"], out, {batch, info.tokens, info.channels});
  size_t need = 0;
  ddit_trace_json(rt, nullptr, 0, &need);
  std::string json(need, '\0');
  ddit_trace_json(rt, &json[0], need, &need);
  json.resize(need - 1);
  if (opt.count("trace")) std::ofstream(opt["trace"]) << json << "\n";
  int n = 0;
  ddit_trace_length(rt, &n);
  std::string line;
  for (int i = 0; i < n; ++i) {
    ddit_step s;
    ddit_trace_step(rt, i, &s);
    line += (i ? "," : "") + std::to_string(s.size);
  }
  std::printf("sizes per step: %s\ndenoise median %.4f s over %d run(s)\npeak RSS %ld kB\n", line.c_str(),
              median(secs), repeat, peak_rss_kb());
  ddit_close(rt);
  return 0;
}
