// The generation loop (ddit_export/runtime/generate.py, ported) and the C API over it: per step the scheduler picks
// a size from the latent history, the backend runs that variant, and the Euler step of FLUX's rectified flow moves
// the fine-token latents from sigma_i to sigma_{i+1}. Every C++ exception stops at the extern "C" functions.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/DeviceAccelerator.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cache.h"
#include "carry.h"
#include "flops.h"
#include "runtime.h"
#include "scheduler.h"
#include "text_image.h"

using ddit::Error;
using ddit::argument_error;
using ddit::guarded;
using ddit::need;

std::string& ddit::last_error() {
  thread_local std::string message;
  return message;
}

void ddit::use_threads(const ddit_runtime* rt) {
  if (at::get_num_threads() != rt->threads) at::set_num_threads(rt->threads);
}

struct ddit_scheduler {
  std::unique_ptr<ddit::Scheduler> impl;
  int gf, gh, gw;
};

namespace {

ddit::ScheduleSettings to_settings(const ddit_schedule& s) {
  ddit::ScheduleSettings o;
  o.policy = std::string(s.policy, strnlen(s.policy, sizeof(s.policy)));
  o.tau = s.tau;
  o.eps = s.eps;
  o.warmup = s.warmup;
  o.same_size_window = s.window_same_size != 0;
  o.head = s.head;
  o.n4 = s.n4;
  o.tail = s.tail;
  o.coarse_steps = s.coarse_steps;
  o.coarse_size = s.coarse_size;
  if (s.n_static > 0) {
    need(s.static_sizes, "schedule.static_sizes");
    o.static_sizes.assign(s.static_sizes, s.static_sizes + s.n_static);
  }
  if (s.carry != 0 && s.carry != 1)
    throw argument_error("schedule.carry must be 0 (off) or 1 (fine), got " + std::to_string(s.carry));
  o.carry = s.carry ? "fine" : "off";
  if (s.video_std != 0 && s.video_std != 1)
    throw argument_error("schedule.video_std must be 0 (clip) or 1 (frame), got " + std::to_string(s.video_std));
  o.video_std = s.video_std ? "frame" : "clip";
  return o;
}

ddit::CacheSettings to_cache(const ddit_cache& c) {
  ddit::CacheSettings o;
  o.mode = std::string(c.mode, strnlen(c.mode, sizeof(c.mode)));
  o.interval = c.interval;
  o.order = c.order;
  o.warmup = c.warmup;
  o.tail = c.tail;
  o.threshold = c.threshold;
  if (c.n_plan < 0) throw argument_error("cache.n_plan must be >= 0");
  if (c.n_plan > 0) {
    need(c.plan, "cache.plan");
    o.plan.assign(c.plan, c.plan + c.n_plan);
  }
  if (c.on_switch != 0 && c.on_switch != 1)
    throw argument_error("cache.on_switch must be 0 or 1, got " + std::to_string(c.on_switch));
  o.on_switch = c.on_switch == 1;
  return o;
}

nlohmann::ordered_json cache_dict(const ddit::CacheSettings& c) {  // CacheSettings.to_dict()
  nlohmann::ordered_json d = {{"mode", c.mode}, {"interval", c.interval}, {"order", c.order}, {"warmup", c.warmup},
                              {"tail", c.tail}};
  d["threshold"] = c.threshold > 0 ? nlohmann::ordered_json(c.threshold) : nlohmann::ordered_json();
  d["plan"] = c.plan.empty() ? nlohmann::ordered_json() : nlohmann::ordered_json(c.plan);
  d["switch"] = c.on_switch;
  return d;
}

// The trace's "settings", shaped as Python's {"generate": GenerateSettings, "sizes": [...]} where they overlap.
std::string settings_json(const ddit_request& q, int steps, const ddit::ScheduleSettings& s,
                          const ddit::CacheSettings& c, const std::vector<int>& sizes) {
  nlohmann::ordered_json sched = {{"policy", s.policy}, {"tau", s.tau}, {"eps", s.eps}, {"warmup", s.warmup},
                                  {"window", s.same_size_window ? "same-size" : "any"}, {"head", s.head},
                                  {"n4", s.n4}, {"tail", s.tail}};
  if (s.carry != "off") sched["carry"] = s.carry;  // named only when set, as the manifest has it
  if (s.video_std != "clip") sched["video_std"] = s.video_std;
  using ojson = nlohmann::ordered_json;
  ojson g = {{"batch", q.batch}, {"seed", q.init_latents ? ojson() : ojson(q.seed)}, {"steps", steps},
             {"guidance", q.guidance}, {"schedule", sched}};
  g["static"] = s.policy == "static" ? nlohmann::ordered_json(s.static_sizes) : nlohmann::ordered_json();
  g["coarse_first"] = s.policy == "coarse-first" ? nlohmann::ordered_json({s.coarse_steps, s.coarse_size})
                                                  : nlohmann::ordered_json();
  g["cache"] = cache_dict(c);
  return nlohmann::ordered_json({{"generate", g}, {"sizes", sizes}}).dump();
}

void check_finite(const at::Tensor& t, const char* what) {
  if (!at::isfinite(t).all().item<bool>()) throw argument_error(std::string(what) + " contain NaN or infinite values");
}

void fill_step(ddit_step& st, int i, double sigma, const ddit::Decision& d, int tokens) {
  std::memset(&st, 0, sizeof st);
  st.step = i;
  st.sigma = sigma;
  st.size = d.size;
  std::strncpy(st.reason, d.reason.c_str(), sizeof(st.reason) - 1);
  st.tokens = tokens;
  for (const auto& [k, v] : d.sigmas) {
    if (st.n_sigmas == DDIT_MAX_SIZES) break;
    st.sigma_sizes[st.n_sigmas] = k;
    st.sigma_values[st.n_sigmas++] = v;
  }
}

// FluxPipeline's initial latents: randn (B, C, 2h, 2w) from a CPU generator seeded with `seed`, packed 2x2. A
// video bundle: randn (B, C, F, H, W) (WanPipeline's latent shape), packed into Wan patches (models/wan.py
// pack_video: tokens (f, y, x), channels (t, y, x, c)).
at::Tensor initial_noise(const ddit::Bundle& b, int batch, int64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(static_cast<uint64_t>(seed));
  if (b.video) {
    const int64_t pt = b.patch_t, ph = b.patch_h, pw = b.patch_w;
    at::Tensor n = at::randn({batch, b.latent_channels, b.latent_frames, b.grid_h * ph, b.grid_w * pw}, gen, at::kFloat);
    return n.reshape({batch, b.latent_channels, b.grid_f, pt, b.grid_h, ph, b.grid_w, pw})
        .permute({0, 2, 4, 6, 3, 5, 7, 1})
        .reshape({batch, b.tokens(), b.channels()})
        .contiguous();
  }
  at::Tensor n = at::randn({batch, b.latent_channels, 2 * b.grid_h, 2 * b.grid_w}, gen, at::kFloat);
  return n.reshape({batch, b.latent_channels, b.grid_h, 2, b.grid_w, 2})
      .permute({0, 2, 4, 1, 3, 5})
      .reshape({batch, b.tokens(), b.channels()})
      .contiguous();
}

at::Tensor image_ids(int gh, int gw) {
  at::Tensor ids = at::zeros({gh, gw, 3}, at::kFloat);
  ids.select(2, 1).copy_(at::arange(gh, at::kFloat).unsqueeze(1).expand({gh, gw}));
  ids.select(2, 2).copy_(at::arange(gw, at::kFloat).unsqueeze(0).expand({gh, gw}));
  return ids.reshape({gh * gw, 3});
}

at::Tensor wrap(const float* p, std::vector<int64_t> shape) {
  return at::from_blob(const_cast<float*>(p), shape, at::kFloat);
}

void check_len(const char* what, size_t got, size_t want) {
  if (got != want) {
    std::ostringstream m;
    m << what << " has " << got << " floats; this bundle needs " << want;
    throw argument_error(m.str());
  }
}

ddit::StepInputs inputs(ddit_runtime* rt, const at::Tensor& x, const at::Tensor& states, const at::Tensor& pooled,
                        float timestep, float guidance) {
  const int64_t batch = x.size(0);
  const at::Device dev = rt->backend->device();
  ddit::StepInputs in;
  in.hidden_states = x.to(dev).contiguous();
  in.encoder_hidden_states = states;
  if (pooled.defined()) in.pooled_projections = pooled;
  in.timestep = at::full({batch}, timestep, at::TensorOptions().dtype(at::kFloat).device(dev));
  in.img_ids = rt->img_ids;
  in.txt_ids = rt->txt_ids;
  if (rt->bundle.guidance_embeds) in.guidance = at::full({batch}, guidance, at::TensorOptions().dtype(at::kFloat).device(dev));
  return in;
}

void denoise(ddit_runtime* rt, const ddit_request& q, float* out, size_t out_len) {
  const ddit::Bundle& b = rt->bundle;
  if (q.batch < 1) throw argument_error("request.batch must be >= 1, got " + std::to_string(q.batch));
  if (q.steps < 0)
    throw argument_error("request.steps must be >= 1 (0: the bundle's default), got " + std::to_string(q.steps));
  if (!std::isfinite(q.guidance)) throw argument_error("request.guidance must be a finite number");
  need(q.states, "request.states");
  if (b.pooled_dim) need(q.pooled, "request.pooled");
  else if (q.pooled && q.pooled_len)  // a video bundle: text states only
    throw argument_error("request.pooled: this " + b.kind + " bundle takes no pooled text (give NULL, 0)");
  need(out, "out_latents");
  const size_t B = size_t(q.batch), N = size_t(b.tokens()), C = size_t(b.channels());
  check_len("request.states", q.states_len, B * b.text_len * b.joint_dim);
  check_len("request.pooled", q.pooled_len, B * b.pooled_dim);
  check_len("out_latents", out_len, B * N * C);
  const int steps = q.steps > 0 ? q.steps : b.default_steps;
  ddit::ScheduleSettings ss = q.schedule ? to_settings(*q.schedule) : b.schedule;
  ddit::Scheduler sched(ss, b.grid_h, b.grid_w, rt->backend->sizes(), steps, b.grid_f);
  const ddit::CacheSettings cs = q.cache ? to_cache(*q.cache) : b.cache;
  cs.check(steps);
  at::Tensor x;
  if (q.init_latents) {
    check_len("request.init_latents", q.init_len, B * N * C);
    x = wrap(q.init_latents, {q.batch, int64_t(N), int64_t(C)}).clone();
    if (!at::isfinite(x).all().item<bool>()) throw argument_error("init_latents contain NaN or infinite values");
  } else {
    if (q.seed < 0) throw argument_error("seed must be >= 0");
    x = initial_noise(b, q.batch, q.seed);
  }
  const at::Device dev = rt->backend->device();
  x = x.to(dev);
  const at::Tensor states_host = wrap(q.states, {q.batch, b.text_len, b.joint_dim});
  check_finite(states_host, "request.states");
  at::Tensor states = states_host.to(dev).contiguous();
  at::Tensor pooled;  // undefined for a video bundle
  if (b.pooled_dim) {
    const at::Tensor pooled_host = wrap(q.pooled, {q.batch, b.pooled_dim});
    check_finite(pooled_host, "request.pooled");
    pooled = pooled_host.to(dev).contiguous();
  }
  const std::vector<float> sigmas = ddit::flux_sigmas(b.scheduler, steps, b.tokens());
  const float T = float(b.scheduler.num_train_timesteps);
  std::vector<ddit_step> trace(steps);
  // the policy decides every step, cached ones included (generate.py): static schedules stay aligned to the step
  // index and the rule's window has no gaps; a cached step records the chosen size with 0 FLOPs
  std::unique_ptr<ddit::StepCache> cache;
  if (cs.enabled()) cache = std::make_unique<ddit::StepCache>(cs, steps);
  // detail carry (carry.cpp): computed steps only, before the cache keeps their velocity (generate.py's order)
  std::unique_ptr<ddit::DetailCarry> carry;
  if (ss.carry == "fine")  // sub: the latent pixels packed in a fine token (FLUX: 2x2; Wan: its patch)
    carry = std::make_unique<ddit::DetailCarry>(b.grid_h, b.grid_w, b.channels() / b.latent_channels, b.grid_f,
                                                b.video);
  ddit::use_threads(rt);
  c10::InferenceMode guard;
  for (int i = 0; i < steps; ++i) {
    const float t = sigmas[i] * T;  // diffusers' timesteps; FLUX's model gets t / 1000, Wan's t as it is
    at::Tensor host;  // a device-to-host copy per step only for policies that read the latents
    if (sched.needs_history()) host = x.to(at::kCPU).contiguous();
    const ddit::Decision d = sched.decide(i, host.defined() ? host.data_ptr<float>() : nullptr, q.batch, int(C));
    const auto t0 = std::chrono::steady_clock::now();
    const double sigma = double(t / 1000.0f);  // generate.py: float(t / 1000) of the float32 timestep
    at::Tensor v;
    const bool computed = !cache || cache->should_compute(i, sigma, d.size);
    if (computed) {
      v = rt->backend->run(d.size, inputs(rt, x, states, pooled, b.video ? t : t / 1000.0f, q.guidance))
              .to(at::kFloat);
      if (carry) v = carry->apply(d.size, v);
      if (cache) cache->update(i, sigma, v, d.size);
    } else {
      v = cache->predict(sigma);
    }
    x = x + (sigmas[i + 1] - sigmas[i]) * v;  // FlowMatchEulerDiscreteScheduler.step, float32
    if (dev.type() != at::kCPU)  // the step's time includes the device work
      at::accelerator::synchronizeDevice(dev.has_index() ? dev.index() : at::accelerator::getDeviceIndex());
    fill_step(trace[i], i, sigma, d, b.tokens() / (d.size * d.size));  // frames are never merged
    trace[i].seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::strncpy(trace[i].kind, computed ? "model" : "cached", sizeof(trace[i].kind) - 1);
    trace[i].flops = computed ? double(b.step_flops(d.size, b.lora_rank, q.batch)) : 0.0;
  }
  x = x.to(at::kCPU).contiguous();
  std::memcpy(out, x.data_ptr<float>(), B * N * C * sizeof(float));
  rt->trace = std::move(trace);
  rt->fine_flops = b.step_flops(1, 0, q.batch);
  std::vector<int> usable;  // generate.py's "sizes": the loaded sizes dividing the (spatial) grid
  for (int k : rt->backend->sizes())
    if (b.grid_h % k == 0 && b.grid_w % k == 0) usable.push_back(k);
  std::sort(usable.begin(), usable.end());
  rt->trace_settings = settings_json(q, steps, ss, cs, usable);
}

// schedule/trace.py Trace.to_dict() (format ddit-trace/1, keys in its order), plus where it ran
std::string trace_json(const ddit_runtime* rt) {
  using ojson = nlohmann::ordered_json;
  ojson steps = ojson::array();
  double total = 0.0, coarse = 0.0, cached = 0.0;
  for (const auto& s : rt->trace) {
    ojson sig = ojson::object();
    for (int j = 0; j < s.n_sigmas; ++j) sig[std::to_string(s.sigma_sizes[j])] = s.sigma_values[j];
    steps.push_back({{"step", s.step}, {"timestep", s.sigma}, {"size", s.size}, {"reason", s.reason},
                     {"tokens", s.tokens}, {"flops", s.flops}, {"sigmas", sig}, {"seconds", s.seconds},
                     {"kind", s.kind}});
    total += s.flops;
    coarse += s.size > 1;
    cached += std::strcmp(s.kind, "cached") == 0;
  }
  const double n = double(rt->trace.size());
  ojson d;
  d["model"] = rt->bundle.name;
  const auto& b = rt->bundle;  // a video's grid is (F, h, w), as Python's trace has it
  d["grid"] = b.video ? ojson({b.grid_f, b.grid_h, b.grid_w}) : ojson({b.grid_h, b.grid_w});
  d["settings"] = rt->trace_settings.empty() ? ojson::object() : ojson::parse(rt->trace_settings);
  d["steps"] = steps;
  d["fine_flops_per_step"] = rt->fine_flops;
  d["format"] = "ddit-trace/1";
  d["coarse_fraction"] = coarse / std::max(n, 1.0);
  d["total_flops"] = total;
  d["flops_ratio"] = n > 0 ? total / (double(rt->fine_flops) * n) : 1.0;
  d["cached_fraction"] = cached / std::max(n, 1.0);
  d["runtime"] = "ddit-cpp";
  d["backend"] = rt->backend->name();
  d["verified"] = rt->verified;
  d["threads"] = rt->threads;
  return d.dump(1);
}

}  // namespace

extern "C" {

const char* ddit_last_error(void) { return ddit::last_error().c_str(); }
const char* ddit_version(void) { return "ddit-cpp 0.4.0 (C API 4)"; }

void ddit_open_options_init(ddit_open_options* opts) {
  if (!opts) return;
  std::memset(opts, 0, sizeof *opts);
  opts->threads = 1;
  opts->verify = 1;
}

int ddit_open_ex(const char* bundle_dir, const ddit_open_options* opts, ddit_runtime** out) {
  return guarded([&] {
    need(bundle_dir, "bundle_dir");
    need(opts, "options");
    need(out, "out");
    *out = nullptr;
    const int* sizes = opts->sizes;
    const int n_sizes = opts->n_sizes;
    if (n_sizes < 0 || (n_sizes > 0 && !sizes)) throw argument_error("sizes: NULL with n_sizes > 0");
    if (opts->threads < 1)
      throw argument_error("options.threads must be >= 1, got " + std::to_string(opts->threads));
    auto rt = std::make_unique<ddit_runtime>();
    rt->bundle = ddit::read_bundle(bundle_dir);
    rt->threads = opts->threads;
    if (opts->verify) ddit::verify_files(rt->bundle);  // before anything is loaded from the files
    rt->verified = opts->verify != 0;
    ddit::use_threads(rt.get());
    std::vector<int> want(sizes, sizes + n_sizes);
    if (rt->bundle.device != "cpu" && !at::hasCUDA())
      throw ddit::bundle_error("the AOTInductor package was compiled for " + rt->bundle.device +
                               ", and this libtorch has no GPU; rebuild with `build --backend aoti` for cpu");
    rt->backend = ddit::make_aoti_backend(rt->bundle, want);
    const at::Device dev = rt->backend->device();
    if (!rt->bundle.video) {  // FLUX's position ids (Wan computes its 3-D RoPE inside the package)
      rt->img_ids = image_ids(rt->bundle.grid_h, rt->bundle.grid_w).to(dev);
      rt->txt_ids = at::zeros({rt->bundle.text_len, 3}, at::kFloat).to(dev);
    }
    *out = rt.release();
  });
}

int ddit_open_sizes(const char* bundle_dir, const int* sizes, int n_sizes, ddit_runtime** out) {
  ddit_open_options o;
  ddit_open_options_init(&o);
  o.sizes = sizes;
  o.n_sizes = n_sizes;
  return ddit_open_ex(bundle_dir, &o, out);
}

int ddit_open(const char* bundle_dir, ddit_runtime** out) { return ddit_open_sizes(bundle_dir, nullptr, 0, out); }

int ddit_cache_defaults(const ddit_runtime* rt, ddit_cache* o) {
  return guarded([&] {
    need(rt, "runtime");
    need(o, "out");
    const auto& c = rt->bundle.cache;
    std::memset(o, 0, sizeof *o);
    std::strncpy(o->mode, c.mode.c_str(), sizeof(o->mode) - 1);
    o->interval = c.interval;
    o->order = c.order;
    o->warmup = c.warmup;
    o->tail = c.tail;
    o->threshold = c.threshold;
    o->plan = c.plan.empty() ? nullptr : c.plan.data();  // lives as long as the handle
    o->n_plan = int(c.plan.size());
    o->on_switch = c.on_switch ? 1 : 0;
  });
}

void ddit_close(ddit_runtime* rt) {
  guarded([&] { delete rt; });
}

int ddit_get_info(const ddit_runtime* rt, ddit_info* o) {
  return guarded([&] {
    need(rt, "runtime");
    need(o, "out");
    const auto& b = rt->bundle;
    std::memset(o, 0, sizeof *o);
    o->height = b.height;
    o->width = b.width;
    o->grid_h = b.grid_h;
    o->grid_w = b.grid_w;
    o->tokens = b.tokens();
    o->channels = b.channels();
    o->text_len = b.text_len;
    o->joint_dim = b.joint_dim;
    o->pooled_dim = b.pooled_dim;
    o->guidance_embeds = b.guidance_embeds;
    o->default_steps = b.default_steps;
    o->latent_channels = b.latent_channels;
    for (int k : rt->backend->sizes())
      if (o->n_sizes < DDIT_MAX_SIZES) o->sizes[o->n_sizes++] = k;
    std::strncpy(o->device, b.device.c_str(), sizeof(o->device) - 1);
    o->threads = rt->threads;
    o->verified = rt->verified;
    o->has_text_encoder = rt->backend->has_text_encoder() && !b.vocab.empty();
    o->has_decoder = ddit::has_decoder(*rt);
    o->max_words = o->has_text_encoder ? b.max_words : 0;
    o->is_video = b.video;
    o->frames = b.clip_frames();
    o->grid_f = b.grid_f;
  });
}

int ddit_schedule_defaults(const ddit_runtime* rt, ddit_schedule* o) {
  return guarded([&] {
    need(rt, "runtime");
    need(o, "out");
    const auto& s = rt->bundle.schedule;
    std::memset(o, 0, sizeof *o);
    std::strncpy(o->policy, s.policy.c_str(), sizeof(o->policy) - 1);
    o->tau = s.tau;
    o->eps = s.eps;
    o->warmup = s.warmup;
    o->window_same_size = s.same_size_window;
    o->head = s.head;
    o->n4 = s.n4;
    o->tail = s.tail;
    o->coarse_size = 2;
    o->carry = s.carry == "fine" ? 1 : 0;
    o->video_std = s.video_std == "frame" ? 1 : 0;
  });
}

int ddit_denoise(ddit_runtime* rt, const ddit_request* req, float* out_latents, size_t out_len) {
  return guarded([&] {
    need(rt, "runtime");
    need(req, "request");
    ddit::PromptEmbeddings encoded;  // request.prompts -> states/pooled by the bundle's word encoder
    denoise(rt, ddit::with_prompts(rt, *req, encoded), out_latents, out_len);
  });
}

int ddit_trace_length(const ddit_runtime* rt, int* n) {
  return guarded([&] {
    need(rt, "runtime");
    need(n, "n");
    *n = int(rt->trace.size());
  });
}

int ddit_trace_step(const ddit_runtime* rt, int i, ddit_step* out) {
  return guarded([&] {
    need(rt, "runtime");
    need(out, "out");
    if (i < 0 || i >= int(rt->trace.size())) throw argument_error("trace step out of range");
    *out = rt->trace[i];
  });
}

int ddit_trace_json(const ddit_runtime* rt, char* buf, size_t cap, size_t* needed) {
  return guarded([&] {
    need(rt, "runtime");
    const std::string s = trace_json(rt);
    if (needed) *needed = s.size() + 1;
    if (cap == 0) return;
    need(buf, "buf");
    if (cap < s.size() + 1) throw argument_error("buffer too small for the trace JSON (see *needed)");
    std::memcpy(buf, s.c_str(), s.size() + 1);
  });
}

int ddit_run_variant(ddit_runtime* rt, int size, int batch, const float* latents, const float* states,
                     const float* pooled, float timestep, float guidance, float* out) {
  return guarded([&] {
    need(rt, "runtime");
    need(latents, "latents");
    need(states, "states");
    need(out, "out");
    if (batch < 1) throw argument_error("batch must be >= 1");
    const auto& b = rt->bundle;
    if (b.pooled_dim) need(pooled, "pooled");
    const auto have = rt->backend->sizes();
    if (std::find(have.begin(), have.end(), size) == have.end())
      throw ddit::bundle_error("size " + std::to_string(size) + " is not loaded");
    const at::Device dev = rt->backend->device();
    ddit::use_threads(rt);
    c10::InferenceMode guard;
    at::Tensor x = wrap(latents, {batch, b.tokens(), b.channels()});
    at::Tensor s = wrap(states, {batch, b.text_len, b.joint_dim}).to(dev).contiguous();
    at::Tensor p;  // undefined for a video bundle
    if (b.pooled_dim) p = wrap(pooled, {batch, b.pooled_dim}).to(dev).contiguous();
    // timestep is sigma in [0, 1]: FLUX's model takes it so, Wan's takes it in diffusers' 0..1000 timesteps
    const float t = b.video ? timestep * float(b.scheduler.num_train_timesteps) : timestep;
    at::Tensor v = rt->backend->run(size, inputs(rt, x, s, p, t, guidance)).to(at::kCPU).to(at::kFloat).contiguous();
    std::memcpy(out, v.data_ptr<float>(), size_t(v.numel()) * sizeof(float));
  });
}

int ddit_scheduler_create_video(const ddit_schedule* schedule, int grid_f, int grid_h, int grid_w, const int* sizes,
                                int n_sizes, int steps, ddit_scheduler** out) {
  return guarded([&] {
    need(schedule, "schedule");
    need(sizes, "sizes");
    need(out, "out");
    *out = nullptr;
    if (grid_f < 1 || grid_h < 1 || grid_w < 1 || n_sizes < 1) throw argument_error("grid and sizes must be non-empty");
    auto s = std::make_unique<ddit_scheduler>();
    s->impl = std::make_unique<ddit::Scheduler>(to_settings(*schedule), grid_h, grid_w,
                                                std::vector<int>(sizes, sizes + n_sizes), steps, grid_f);
    s->gf = grid_f;
    s->gh = grid_h;
    s->gw = grid_w;
    *out = s.release();
  });
}

int ddit_scheduler_create(const ddit_schedule* schedule, int grid_h, int grid_w, const int* sizes, int n_sizes,
                          int steps, ddit_scheduler** out) {
  return ddit_scheduler_create_video(schedule, 1, grid_h, grid_w, sizes, n_sizes, steps, out);
}

int ddit_scheduler_decide(ddit_scheduler* s, int step, const float* latents, int batch, int channels, ddit_step* out) {
  return guarded([&] {
    need(s, "scheduler");
    need(out, "out");
    if (s->impl->needs_history()) need(latents, "latents");
    if (batch < 1 || channels < 1) throw argument_error("batch and channels must be >= 1");
    const ddit::Decision d = s->impl->decide(step, latents, batch, channels);
    fill_step(*out, step, 0.0, d, s->gf * s->gh * s->gw / (d.size * d.size));
  });
}

void ddit_scheduler_free(ddit_scheduler* s) { delete s; }

}  // extern "C"
