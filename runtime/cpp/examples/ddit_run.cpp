// ddit-run: a generation through the ddit C API: prompts (the bundle's word encoder) or saved text embeddings in;
// an image (.png, pixel bundles), a clip's frames (.png per frame, wan-pixel bundles) or the final latents (.npy)
// out, and the per-step trace (JSON). A small program to copy: everything it does goes through include/ddit/ddit.h.
//
//   ddit-run BUNDLE --prompt "a red circle" [--prompt ...] --seed 0 --out image.png
//   ddit-run BUNDLE --states states.npy --pooled pooled.npy [--latents init.npy] --out latents.npy
//   ddit-run VIDEO_BUNDLE --prompt "a red circle moving left on a black background" --out clip.png
//
// Every option is in the table kOptions (ddit-run --help prints it). Several prompts write NAME_0.png,
// NAME_1.png, ... as `ddit-export generate --out NAME.png` does; a video bundle writes one PNG per frame,
// NAME_f00.png, NAME_f01.png, ... (NAME_0_f00.png, ... for a batch), and takes --states without --pooled.
// --bench-steps N: instead of a generation, time N calls of every loaded size on the seed's noise (or --latents;
// sizes interleaved) and the switch cost (a call of size a right after size b vs after size a); prints JSON.
// Peak RSS (VmHWM) is printed last. Bad options: one "error: ..." line on stderr, exit 2.
#include <ddit/ddit.h>

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <stdexcept>
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

// ---- options: one table, from which --help is printed and against which every argument is checked ----------
enum class Arg { Flag, Int, Number, Text, Ints, Many };

struct Option {
  const char* name;
  Arg arg;
  const char* meta;
  const char* help;
};

static const Option kOptions[] = {
    {"prompt", Arg::Many, "TEXT", "a prompt, encoded by the bundle's word encoder (repeat for a batch)"},
    {"states", Arg::Text, "S.npy", "text states (batch, text_len, joint_dim), float32, instead of --prompt"},
    {"pooled", Arg::Text, "P.npy", "pooled text embeddings (batch, pooled_dim), float32, with --states (images)"},
    {"latents", Arg::Text, "INIT.npy", "initial latents (batch, tokens, channels) instead of the seed's noise"},
    {"seed", Arg::Int, "N", "seed of the initial noise (>= 0; default 0)"},
    {"steps", Arg::Int, "N", "denoising steps (>= 1; default: the bundle's)"},
    {"guidance", Arg::Number, "G", "distilled guidance (default 3.5)"},
    {"policy", Arg::Text, "NAME", "schedule policy: ddit, ladder, coarse-first, static (default: the bundle's)"},
    {"tau", Arg::Number, "T", "DDiT threshold > 0 (alone: selects the ddit rule)"},
    {"eps", Arg::Number, "E", "DDiT percentile in (0, 1) (alone: selects the ddit rule)"},
    {"schedule", Arg::Ints, "1,1,2,...", "static schedule: one patch size per step"},
    {"coarse-first", Arg::Ints, "K[:SIZE]", "SIZE (default 2) for the first K steps, then fine"},
    {"ladder", Arg::Ints, "HEAD,N4,TAIL", "HEAD fine steps, N4 at size 4, size 2, TAIL fine steps"},
    {"carry", Arg::Text, "MODE", "detail carry: off or fine, with any policy (default: the bundle's)"},
    {"video-std", Arg::Text, "SPAN", "ddit rule on video: the patch std across the clip or per frame: clip, frame"},
    {"sizes", Arg::Ints, "1,2,4", "patch sizes to load (default: every size of the package)"},
    {"threads", Arg::Int, "N", "intra-op threads of the model runs (>= 1; default 1)"},
    {"no-verify", Arg::Flag, "", "skip the sha256 check of the bundle's files at open"},
    {"cache", Arg::Text, "MODE", "step cache: off or taylor (default: the bundle's profile)"},
    {"cache-interval", Arg::Int, "N", "step cache: compute every N-th step (>= 1)"},
    {"cache-order", Arg::Int, "N", "step cache: extrapolation order 0, 1 or 2"},
    {"cache-warmup", Arg::Int, "N", "step cache: computed steps at the start (>= 1)"},
    {"cache-tail", Arg::Int, "N", "step cache: computed steps at the end (>= 0)"},
    {"cache-threshold", Arg::Number, "X", "step cache: error threshold > 0"},
    {"cache-switch", Arg::Flag, "", "step cache: also compute the first step after each patch-size change"},
    {"no-cache-switch", Arg::Flag, "", "step cache: no switch refresh (over the bundle's profile)"},
    {"out", Arg::Text, "PATH", "image.png (pixels; NAME_0.png, ... for a batch; video: NAME_f00.png, ...) or latents.npy"},
    {"trace", Arg::Text, "PATH", "write the per-step trace JSON here"},
    {"repeat", Arg::Int, "N", "run the generation N times, report the median time (>= 1)"},
    {"bench-steps", Arg::Int, "N", "time N model calls of every size instead of a generation (>= 1)"},
    {"help", Arg::Flag, "", "print this help and exit"},
};

static void usage(FILE* f) {
  std::fprintf(f, "usage: ddit-run BUNDLE (--prompt TEXT ... | --states S.npy [--pooled P.npy]) [options]\n\noptions:\n");
  for (const Option& o : kOptions) {
    const std::string lhs = std::string("--") + o.name + (o.meta[0] ? std::string(" ") + o.meta : "");
    std::fprintf(f, "  %-26s %s\n", lhs.c_str(), o.help);
  }
}

struct Error {
  std::string message;
};

static bool parse_int(const std::string& s, long long& v) {
  if (s.empty()) return false;
  char* end = nullptr;
  errno = 0;
  v = std::strtoll(s.c_str(), &end, 10);
  return errno == 0 && *end == '\0' && v >= INT32_MIN && v <= INT32_MAX;
}

static bool parse_number(const std::string& s, double& v) {
  if (s.empty()) return false;
  char* end = nullptr;
  v = std::strtod(s.c_str(), &end);
  return *end == '\0';
}

struct Args {
  std::string bundle;
  std::map<std::string, std::vector<std::string>> given;  // option -> its values (one unless Arg::Many)

  bool has(const char* n) const { return given.count(n) != 0; }
  const std::string& text(const char* n) const { return given.at(n).back(); }
  long long integer(const char* n) const {
    long long v = 0;
    parse_int(text(n), v);
    return v;
  }
  double number(const char* n) const {
    double v = 0;
    parse_number(text(n), v);
    return v;
  }
  std::vector<int> list(const char* n) const {
    std::vector<int> out;
    std::string s = text(n);
    std::replace(s.begin(), s.end(), ':', ',');
    std::stringstream ss(s);
    long long v = 0;
    for (std::string x; std::getline(ss, x, ',');) parse_int(x, v), out.push_back(int(v));
    return out;
  }
};

static Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.rfind("--", 0) != 0) {
      if (!a.bundle.empty()) throw Error{"unexpected argument '" + arg + "' (one BUNDLE; options start with --)"};
      a.bundle = arg;
      continue;
    }
    const std::string name = arg.substr(2);
    const Option* o = nullptr;
    for (const Option& x : kOptions)
      if (name == x.name) o = &x;
    if (!o) throw Error{"unknown option " + arg + " (ddit-run --help lists them)"};
    if (a.has(o->name) && o->arg != Arg::Many) throw Error{arg + " given twice"};
    if (o->arg == Arg::Flag) {
      a.given[name].push_back("1");
      continue;
    }
    if (i + 1 >= argc || std::string(argv[i + 1]).rfind("--", 0) == 0) throw Error{arg + " expects a value"};
    const std::string v = argv[++i];
    long long n = 0;
    double d = 0;
    if (o->arg == Arg::Int && !parse_int(v, n)) throw Error{arg + " expects an integer, got '" + v + "'"};
    if (o->arg == Arg::Number && !parse_number(v, d)) throw Error{arg + " expects a number, got '" + v + "'"};
    if (o->arg == Arg::Ints) {
      std::string s = v;
      std::replace(s.begin(), s.end(), ':', ',');
      std::stringstream ss(s);
      bool ok = !s.empty() && s.back() != ',';
      for (std::string x; ok && std::getline(ss, x, ',');) ok = parse_int(x, n);
      if (!ok) throw Error{arg + " expects integers separated by commas, got '" + v + "'"};
    }
    a.given[name].push_back(v);
  }
  return a;
}

// Range checks of the parsed values (the C API checks them again; here they fail before the bundle loads).
static void check(const Args& a) {
  if (a.bundle.empty()) throw Error{"give the BUNDLE folder (ddit-run --help)"};
  auto at_least = [&](const char* n, long long lo) {
    if (a.has(n) && a.integer(n) < lo)
      throw Error{std::string("--") + n + " must be >= " + std::to_string(lo) + ", got " + a.text(n)};
  };
  at_least("seed", 0), at_least("steps", 1), at_least("threads", 1), at_least("repeat", 1);
  at_least("bench-steps", 1), at_least("cache-interval", 1), at_least("cache-warmup", 1), at_least("cache-tail", 0);
  if (a.has("cache-order") && (a.integer("cache-order") < 0 || a.integer("cache-order") > 2))
    throw Error{"--cache-order must be 0, 1 or 2, got " + a.text("cache-order")};
  for (const char* n : {"tau", "cache-threshold"})
    if (a.has(n) && !(a.number(n) > 0 && std::isfinite(a.number(n))))
      throw Error{std::string("--") + n + " must be > 0 and finite, got " + a.text(n)};
  if (a.has("eps") && !(a.number("eps") > 0 && a.number("eps") < 1))
    throw Error{"--eps must be in (0, 1), got " + a.text("eps")};
  if (a.has("guidance") && !std::isfinite(a.number("guidance")))
    throw Error{"--guidance must be finite, got " + a.text("guidance")};
  if (a.has("policy")) {
    const std::string p = a.text("policy");
    if (p != "ddit" && p != "ladder" && p != "coarse-first" && p != "static")
      throw Error{"--policy must be one of ddit, ladder, coarse-first, static, got '" + p + "'"};
  }
  if (a.has("carry") && a.text("carry") != "off" && a.text("carry") != "fine")
    throw Error{"--carry must be off or fine, got '" + a.text("carry") + "'"};
  if (a.has("cache-switch") && a.has("no-cache-switch"))
    throw Error{"--cache-switch and --no-cache-switch contradict each other"};
  if (a.has("cache") && a.text("cache") != "off" && a.text("cache") != "taylor")
    throw Error{"--cache must be off or taylor, got '" + a.text("cache") + "'"};
  int schedules = 0;
  for (const char* n : {"policy", "schedule", "coarse-first", "ladder"}) schedules += a.has(n);
  if (schedules > 1) throw Error{"give one of --policy, --schedule, --coarse-first, --ladder"};
  if (a.has("ladder") && a.list("ladder").size() != 3) throw Error{"--ladder takes HEAD,N4,TAIL"};
  if (a.has("coarse-first") && a.list("coarse-first").size() > 2) throw Error{"--coarse-first takes K or K:SIZE"};
  if (a.has("prompt") == (a.has("states") || a.has("pooled")))
    throw Error{"give --prompt TEXT (the bundle's word encoder), or --states and --pooled (.npy), not both"};
  if (!a.has("prompt") && !a.has("states")) throw Error{"--pooled needs --states"};
  if (a.has("video-std") && a.text("video-std") != "clip" && a.text("video-std") != "frame")
    throw Error{"--video-std takes clip or frame, got " + a.text("video-std")};
  for (const char* n : {"out", "trace"}) {
    if (!a.has(n)) continue;
    const std::string p = a.text(n);
    const auto slash = p.find_last_of('/');
    const std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : p.substr(0, slash);
    struct stat st;
    if (stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
      throw Error{std::string("--") + n + " " + p + ": folder " + dir + " does not exist"};
  }
  if (a.has("out")) {
    const std::string p = a.text("out");
    const bool png = p.size() > 4 && p.compare(p.size() - 4, 4, ".png") == 0;
    const bool npy = p.size() > 4 && p.compare(p.size() - 4, 4, ".npy") == 0;
    if (!png && !npy) throw Error{"--out " + p + ": give a .png (image) or .npy (latents) path"};
  }
}

// ---- PNG: 8-bit RGB, stored (uncompressed) deflate blocks; self-contained (no zlib) ---------------------------
static uint32_t crc32(const uint8_t* p, size_t n, uint32_t c = 0) {
  c = ~c;
  for (size_t i = 0; i < n; ++i) {
    c ^= p[i];
    for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
  }
  return ~c;
}

static void put32(std::string& s, uint32_t v) {
  for (int k = 3; k >= 0; --k) s += char((v >> (8 * k)) & 0xff);
}

static void chunk(std::string& png, const char* type, const std::string& data) {
  put32(png, uint32_t(data.size()));
  const std::string body = std::string(type, 4) + data;
  png += body;
  put32(png, crc32(reinterpret_cast<const uint8_t*>(body.data()), body.size()));
}

static bool write_png(const std::string& path, const uint8_t* rgb, int height, int width) {
  std::string raw;  // each row: filter type 0, then the pixels
  for (int y = 0; y < height; ++y) {
    raw += '\0';
    raw.append(reinterpret_cast<const char*>(rgb) + size_t(y) * width * 3, size_t(width) * 3);
  }
  std::string z = "\x78\x01";  // zlib: deflate, 32K window, no preset dictionary
  uint32_t a = 1, b = 0;       // Adler-32
  for (unsigned char c : raw) a = (a + c) % 65521, b = (b + a) % 65521;
  for (size_t at = 0; at < raw.size(); at += 65535) {
    const size_t n = std::min<size_t>(65535, raw.size() - at);
    z += char(at + n >= raw.size() ? 1 : 0);  // BFINAL on the last block, BTYPE 00 (stored)
    z += char(n & 0xff), z += char(n >> 8), z += char(~n & 0xff), z += char((~n >> 8) & 0xff);
    z.append(raw, at, n);
  }
  put32(z, (b << 16) | a);
  std::string ihdr;
  put32(ihdr, uint32_t(width)), put32(ihdr, uint32_t(height));
  ihdr += std::string("\x08\x02\x00\x00\x00", 5);  // 8 bits, RGB, deflate, adaptive filters, no interlace
  std::string png = "\x89PNG\r\n\x1a\n";
  chunk(png, "IHDR", ihdr), chunk(png, "IDAT", z), chunk(png, "IEND", "");
  std::ofstream f(path, std::ios::binary);
  f.write(png.data(), std::streamsize(png.size()));
  return bool(f);
}

// NAME.png for one image; NAME_0.png, NAME_1.png, ... for a batch (api.numbered_paths).
static std::string numbered(const std::string& out, int i, int n) {
  if (n == 1) return out;
  return out.substr(0, out.size() - 4) + "_" + std::to_string(i) + ".png";
}

// A clip's frame f of `frames`: NAME_f00.png ... (at least two digits, zero-padded to sort).
static std::string frame_path(const std::string& clip, int f, int frames) {
  const int width = std::max(2, int(std::to_string(std::max(frames - 1, 0)).size()));
  std::string num = std::to_string(f);
  num.insert(0, size_t(std::max(0, width - int(num.size()))), '0');
  return clip.substr(0, clip.size() - 4) + "_f" + num + ".png";
}

static bool finite(const std::vector<float>& v) {
  return std::all_of(v.begin(), v.end(), [](float x) { return std::isfinite(x); });
}

static int run(int argc, char** argv) {
  Args a;
  try {
    a = parse(argc, argv);
    if (a.has("help")) {
      usage(stdout);
      return 0;
    }
    check(a);
  } catch (const Error& e) {
    return fail(e.message);
  }
  ddit_open_options oo;
  ddit_open_options_init(&oo);
  std::vector<int> sizes = a.has("sizes") ? a.list("sizes") : std::vector<int>{};
  oo.sizes = sizes.empty() ? nullptr : sizes.data(), oo.n_sizes = int(sizes.size());
  if (a.has("threads")) oo.threads = int(a.integer("threads"));
  if (a.has("no-verify")) oo.verify = 0;
  ddit_runtime* rt = nullptr;
  const auto t_open = std::chrono::steady_clock::now();
  if (ddit_open_ex(a.bundle.c_str(), &oo, &rt) != DDIT_OK) return fail(ddit_last_error());
  const double open_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_open).count();
  ddit_info info;
  ddit_get_info(rt, &info);
  std::vector<float> states, pooled, init;
  std::string err;
  std::vector<const char*> prompts;
  if (a.has("prompt")) {
    for (const auto& p : a.given.at("prompt")) prompts.push_back(p.c_str());
  } else {
    if (info.is_video && a.has("pooled"))
      return fail("this video bundle takes text states only: give --states without --pooled");
    if (!info.is_video && !a.has("pooled")) return fail("give both --states and --pooled");
    if (!read_npy(a.text("states"), states, err)) return fail(err);
    if (info.is_video) {  // batch from the states alone
      const size_t one = size_t(info.text_len) * size_t(info.joint_dim);
      if (states.empty() || states.size() % one != 0)
        return fail("--states has " + std::to_string(states.size()) + " floats; this bundle needs batch * " +
                    std::to_string(one));
      if (!finite(states)) return fail("--states holds NaN or infinite values");
    } else if (!read_npy(a.text("pooled"), pooled, err)) {
      return fail(err);
    } else if (pooled.empty() || pooled.size() % size_t(info.pooled_dim) != 0)
      return fail("--pooled has " + std::to_string(pooled.size()) + " floats; this bundle needs batch * " +
                  std::to_string(info.pooled_dim));
    const size_t batch = pooled.size() / size_t(info.pooled_dim);
    if (states.size() != batch * size_t(info.text_len) * size_t(info.joint_dim))
      return fail("--states has " + std::to_string(states.size()) + " floats; with --pooled's batch of " +
                  std::to_string(batch) + " this bundle needs " +
                  std::to_string(batch * size_t(info.text_len) * size_t(info.joint_dim)));
    if (!finite(states) || !finite(pooled)) return fail("--states or --pooled holds NaN or infinite values");
  }
  const int batch = !prompts.empty() ? int(prompts.size())
                    : info.is_video ? int(states.size() / (size_t(info.text_len) * size_t(info.joint_dim)))
                                    : int(pooled.size() / size_t(info.pooled_dim));
  if (a.has("latents")) {
    if (!read_npy(a.text("latents"), init, err)) return fail(err);
    if (!finite(init)) return fail("--latents holds NaN or infinite values");
  }
  const bool png = a.has("out") && a.text("out").compare(a.text("out").size() - 4, 4, ".png") == 0;
  if (png && !info.has_decoder) return fail("this bundle has no decoder: give --out latents.npy");

  const int64_t seed = a.has("seed") ? a.integer("seed") : 0;  // the initial noise (and the bench's input)
  if (a.has("bench-steps")) {  // per-size step time and switching cost
    if (!prompts.empty()) {
      states.resize(size_t(batch) * info.text_len * info.joint_dim), pooled.resize(size_t(batch) * info.pooled_dim);
      if (ddit_encode(rt, prompts.data(), batch, states.data(), states.size(), pooled.data(), pooled.size()) != 0)
        return fail(ddit_last_error());
    }
    const int n = int(a.integer("bench-steps"));
    // the model's input as in a generation: --latents, else standard normal noise from --seed (the values do not
    // change the arithmetic, but a constant latent is not what a service runs)
    std::vector<float> x(size_t(batch) * info.tokens * info.channels), v(x.size());
    if (!init.empty()) {
      if (init.size() != x.size())
        return fail("--latents holds " + std::to_string(init.size()) + " values; --bench-steps with batch " +
                    std::to_string(batch) + " takes " + std::to_string(x.size()));
      x = init;
    } else {
      std::mt19937_64 gen{uint64_t(seed)};
      std::normal_distribution<float> normal;
      for (auto& e : x) e = normal(gen);
    }
    std::map<int, std::vector<double>> same, switched;
    auto call = [&](int k) {
      const auto t0 = std::chrono::steady_clock::now();
      if (ddit_run_variant(rt, k, batch, x.data(), states.data(), info.pooled_dim ? pooled.data() : nullptr, 0.5f,
                           3.5f, v.data()) != DDIT_OK)
        std::exit(fail(ddit_last_error()));
      return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    };
    for (int k = 0; k < info.n_sizes; ++k) call(info.sizes[k]), call(info.sizes[k]);  // warm-up
    for (int r = 0; r < n; ++r)
      for (int i = 0; i < info.n_sizes; ++i) {
        const int k = info.sizes[i], other = info.sizes[(i + 1) % info.n_sizes];
        call(k);
        same[k].push_back(call(k));      // k after k
        call(other);
        switched[k].push_back(call(k));  // k right after another size
      }
    std::printf("{\"batch\": %d, \"repeats\": %d, \"sizes\": {", batch, n);
    for (int i = 0; i < info.n_sizes; ++i) {
      const int k = info.sizes[i];
      std::printf("%s\"%d\": {\"step_s\": %.6f, \"after_switch_s\": %.6f}", i ? ", " : "", k, median(same[k]),
                  median(switched[k]));
    }
    std::printf("}, \"peak_rss_kb\": %ld}\n", peak_rss_kb());
    ddit_close(rt);
    return 0;
  }

  ddit_schedule sched;
  ddit_schedule_defaults(rt, &sched);
  const std::string profile_policy(sched.policy);
  std::vector<int> static_sizes;
  if (a.has("policy")) std::snprintf(sched.policy, sizeof sched.policy, "%s", a.text("policy").c_str());
  else if ((a.has("tau") || a.has("eps")) && !a.has("schedule") && !a.has("coarse-first") && !a.has("ladder"))
    std::snprintf(sched.policy, sizeof sched.policy, "ddit");  // a DDiT knob asks for the rule (as Python's --tau)
  if (a.has("tau")) sched.tau = a.number("tau");
  if (a.has("eps")) sched.eps = a.number("eps");
  if (a.has("schedule")) {
    static_sizes = a.list("schedule");
    std::snprintf(sched.policy, sizeof sched.policy, "static");
    sched.static_sizes = static_sizes.data();
    sched.n_static = int(static_sizes.size());
  }
  if (a.has("coarse-first")) {
    const auto v = a.list("coarse-first");
    std::snprintf(sched.policy, sizeof sched.policy, "coarse-first");
    sched.coarse_steps = v[0];
    sched.coarse_size = v.size() > 1 ? v[1] : 2;
  }
  if (a.has("ladder")) {
    const auto v = a.list("ladder");
    std::snprintf(sched.policy, sizeof sched.policy, "ladder");
    sched.head = v[0], sched.n4 = v[1], sched.tail = v[2];
  }
  // detail carry belongs to the profile's operating point: another policy, a --schedule or --coarse-first runs
  // without it unless --carry says so (as Python's build_settings)
  if (profile_policy != sched.policy) sched.carry = 0;
  if (a.has("carry")) sched.carry = a.text("carry") == "fine";
  if (a.has("video-std")) sched.video_std = a.text("video-std") == "frame";
  ddit_cache cache;
  bool cache_given = false;
  for (const char* n : {"cache", "cache-interval", "cache-order", "cache-warmup", "cache-tail", "cache-threshold",
                        "cache-switch", "no-cache-switch"})
    cache_given = cache_given || a.has(n);
  if (cache_given) {  // over the bundle's cache profile; a knob without --cache means the cache (as Python's)
    if (ddit_cache_defaults(rt, &cache) != DDIT_OK) return fail(ddit_last_error());
    if (a.has("cache")) std::snprintf(cache.mode, sizeof cache.mode, "%s", a.text("cache").c_str());
    else if (std::strcmp(cache.mode, "off") == 0) std::snprintf(cache.mode, sizeof cache.mode, "taylor");
    if (a.has("cache-interval")) cache.interval = int(a.integer("cache-interval"));
    if (a.has("cache-order")) cache.order = int(a.integer("cache-order"));
    if (a.has("cache-warmup")) cache.warmup = int(a.integer("cache-warmup"));
    if (a.has("cache-tail")) cache.tail = int(a.integer("cache-tail"));
    if (a.has("cache-threshold")) cache.threshold = a.number("cache-threshold");
    if (a.has("cache-switch")) cache.on_switch = 1;
    if (a.has("no-cache-switch")) cache.on_switch = 0;
  }
  ddit_request req{};
  req.batch = batch;
  if (prompts.empty()) {
    req.states = states.data(), req.states_len = states.size();
    if (!pooled.empty()) req.pooled = pooled.data(), req.pooled_len = pooled.size();
  } else {
    req.prompts = prompts.data();
  }
  req.steps = a.has("steps") ? int(a.integer("steps")) : 0;
  req.guidance = a.has("guidance") ? float(a.number("guidance")) : 3.5f;
  req.seed = seed;
  if (!init.empty()) req.init_latents = init.data(), req.init_len = init.size();
  req.schedule = &sched;
  req.cache = cache_given ? &cache : nullptr;
  std::vector<float> out(png ? 0 : size_t(batch) * info.tokens * info.channels);
  std::vector<uint8_t> pixels(png ? size_t(batch) * info.frames * info.height * info.width * 3 : 0);
  const int repeat = a.has("repeat") ? int(a.integer("repeat")) : 1;
  std::vector<double> secs;
  for (int r = 0; r < repeat; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    const int rc = png ? ddit_generate(rt, &req, pixels.data(), pixels.size())
                       : ddit_denoise(rt, &req, out.data(), out.size());
    if (rc != DDIT_OK) return fail(ddit_last_error());
    secs.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::vector<std::string> wrote;
  if (png) {
    const size_t one = size_t(info.height) * info.width * 3;  // one image or one frame
    for (int i = 0; i < batch; ++i)
      for (int f = 0; f < info.frames; ++f) {
        const std::string name = numbered(a.text("out"), i, batch);
        wrote.push_back(info.is_video ? frame_path(name, f, info.frames) : name);
        if (!write_png(wrote.back(), pixels.data() + (size_t(i) * info.frames + f) * one, info.height, info.width))
          return fail("cannot write " + wrote.back());
      }
  } else if (a.has("out")) {
    write_npy(a.text("out"), out, {batch, info.tokens, info.channels});
    wrote.push_back(a.text("out"));
  }
  size_t need = 0;
  ddit_trace_json(rt, nullptr, 0, &need);
  std::string json(need, '\0');
  ddit_trace_json(rt, &json[0], need, &need);
  json.resize(need - 1);
  if (a.has("trace")) std::ofstream(a.text("trace")) << json << "\n";
  int n = 0;
  ddit_trace_length(rt, &n);
  std::string line;
  for (int i = 0; i < n; ++i) {
    ddit_step s;
    ddit_trace_step(rt, i, &s);
    line += (i ? "," : "") + std::to_string(s.size);
  }
  std::printf("open %.4f s (sha256 %s)\nsizes per step: %s\n%s median %.4f s over %d run(s)\npeak RSS %ld kB\n",
              open_s, info.verified ? "checked" : "not checked", line.c_str(),
              png ? "generate (encode + denoise + decode)" : "denoise", median(secs), repeat, peak_rss_kb());
  for (const auto& p : wrote) std::printf("wrote %s\n", p.c_str());
  ddit_close(rt);
  return 0;
}

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {  // e.g. a malformed .npy header: still one line and exit 2
    return fail(e.what());
  }
}
