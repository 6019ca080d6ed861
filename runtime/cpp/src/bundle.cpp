#include "bundle.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "error.h"
#include "sha256.h"

namespace ddit {
using json = nlohmann::json;

const AotiVariant& Bundle::variant(int size) const {
  for (const auto& v : variants)
    if (v.size == size) return v;
  std::ostringstream m;
  m << "bundle " << folder << " has no AOTInductor variant for patch size " << size << " (has";
  for (const auto& v : variants) m << " " << v.size;
  m << "); rebuild with --sizes including " << size;
  throw bundle_error(m.str());
}

static ScheduleSettings read_schedule(const json& s) {
  ScheduleSettings out;
  out.policy = s.value("policy", "ddit");
  out.tau = s.value("tau", out.tau);
  out.eps = s.value("eps", out.eps);
  out.warmup = s.value("warmup", out.warmup);
  const std::string window = s.value("window", std::string("any"));
  if (window != "any" && window != "same-size")
    throw Error(DDIT_ERR_UNSUPPORTED, "schedule window '" + window + "' is not ported to the C++ runtime");
  if (s.value("signal", std::string("latent")) != "latent" || s.value("tau4", 0.0) != 0.0)
    throw Error(DDIT_ERR_UNSUPPORTED, "the rule's signal/tau4 variants are not ported to the C++ runtime");
  out.carry = s.value("carry", std::string("off"));  // left out of the manifest when "off"
  if (out.carry != "off" && out.carry != "fine")
    throw Error(DDIT_ERR_UNSUPPORTED, "schedule carry '" + out.carry +
                                          "' is not known to the C++ runtime (it reads carry off and fine)");
  out.same_size_window = window == "same-size";
  out.video_std = s.value("video_std", std::string("clip"));
  if (out.video_std != "clip" && out.video_std != "frame")
    throw Error(DDIT_ERR_UNSUPPORTED, "schedule video_std '" + out.video_std + "' is not known to the C++ runtime "
                                      "(it reads clip and frame)");
  out.head = s.value("head", 0);
  out.n4 = s.value("n4", 0);
  out.tail = s.value("tail", 4);
  return out;
}

static FluxDims read_dims(const json& c) {
  FluxDims m;  // flops.FluxDims.from_config: out_channels null -> in_channels
  m.width = c.at("num_attention_heads").get<int64_t>() * c.at("attention_head_dim").get<int64_t>();
  m.in_channels = c.at("in_channels").get<int64_t>();
  m.out_channels = c.contains("out_channels") && !c["out_channels"].is_null() ? c["out_channels"].get<int64_t>()
                                                                              : m.in_channels;
  m.joint_dim = c.at("joint_attention_dim").get<int64_t>();
  m.pooled_dim = c.at("pooled_projection_dim").get<int64_t>();
  m.double_blocks = c.at("num_layers").get<int64_t>();
  m.single_blocks = c.at("num_single_layers").get<int64_t>();
  m.guidance = c.value("guidance_embeds", false);
  return m;
}

static WanDims read_wan_dims(const json& c) {
  WanDims m;  // flops.wan_step_flops's fields; out_channels null -> in_channels
  m.width = c.at("num_attention_heads").get<int64_t>() * c.at("attention_head_dim").get<int64_t>();
  m.ffn_dim = c.at("ffn_dim").get<int64_t>();
  m.freq_dim = c.at("freq_dim").get<int64_t>();
  m.text_dim = c.at("text_dim").get<int64_t>();
  m.in_channels = c.at("in_channels").get<int64_t>();
  m.out_channels = c.contains("out_channels") && !c["out_channels"].is_null() ? c["out_channels"].get<int64_t>()
                                                                              : m.in_channels;
  for (int64_t p : c.at("patch_size").get<std::vector<int64_t>>()) m.patch *= p;
  m.layers = c.at("num_layers").get<int64_t>();
  return m;
}

// The fine token grid of a video bundle, as shapes.VideoGeometry has it: a VAE with temporal factor > 1 keeps the
// first frame and compresses the rest; a fine token is one (patch_t, patch_h, patch_w) patch of the latent.
static void video_grid(const json& m, Bundle& b, const std::string& path) {
  b.frames = m.at("frames").get<int>();
  b.vae_temporal = m.value("vae_temporal", 1);
  const auto patch = m.at("patch").get<std::vector<int>>();
  if (patch.size() != 3 || *std::min_element(patch.begin(), patch.end()) < 1)
    throw bundle_error(path + ": field 'model.patch' must be three positive integers");
  b.patch_t = patch[0], b.patch_h = patch[1], b.patch_w = patch[2];
  if (b.frames < 1 || b.vae_temporal < 1 || (b.vae_temporal > 1 && (b.frames - 1) % b.vae_temporal))
    throw bundle_error(path + ": model.frames " + std::to_string(b.frames) + " do not fit the VAE's temporal factor " +
                       std::to_string(b.vae_temporal));
  b.latent_frames = b.vae_temporal > 1 ? (b.frames - 1) / b.vae_temporal + 1 : b.frames;
  if (b.latent_frames % b.patch_t)
    throw bundle_error(path + ": model.frames " + std::to_string(b.frames) + " do not fit the temporal patch " +
                       std::to_string(b.patch_t));
  b.grid_f = b.latent_frames / b.patch_t;
  const int uh = b.vae_scale * b.patch_h, uw = b.vae_scale * b.patch_w;
  if (b.height % uh || b.width % uw)
    throw bundle_error(path + ": model height/width do not fit the VAE factor x patch");
  b.grid_h = b.height / uh;
  b.grid_w = b.width / uw;
}

// The manifest's cache profile, as CacheSettings.to_dict() writes it (threshold / plan null: none).
static CacheSettings read_cache(const json& c, const std::string& path) {
  CacheSettings out;
  out.mode = c.value("mode", out.mode);
  out.interval = c.value("interval", out.interval);
  out.order = c.value("order", out.order);
  out.warmup = c.value("warmup", out.warmup);
  out.tail = c.value("tail", out.tail);
  if (c.contains("threshold") && !c["threshold"].is_null()) out.threshold = c["threshold"].get<double>();
  if (c.contains("plan") && !c["plan"].is_null()) out.plan = c["plan"].get<std::vector<int>>();
  out.on_switch = c.value("switch", false);
  try {
    out.check(-1);
  } catch (const Error& e) {
    throw bundle_error(path + ": field 'cache': " + e.what());
  }
  return out;
}

static SchedulerConfig read_scheduler(const json& c, const std::string& path) {
  SchedulerConfig out;
  for (const char* key : {"use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "invert_sigmas",
                          "stochastic_sampling"})
    if (c.contains(key) && c[key].is_boolean() && c[key].get<bool>())
      throw Error(DDIT_ERR_UNSUPPORTED, path + ": scheduler option '" + key + "' is not ported to the C++ runtime");
  if (c.contains("shift_terminal") && !c["shift_terminal"].is_null())
    throw Error(DDIT_ERR_UNSUPPORTED, path + ": scheduler option 'shift_terminal' is not ported to the C++ runtime");
  const std::string cls = c.value("_class_name", std::string("FlowMatchEulerDiscreteScheduler"));
  if (cls != "FlowMatchEulerDiscreteScheduler")  // Wan 2.1's UniPCMultistepScheduler: multistep, not ported
    throw Error(DDIT_ERR_UNSUPPORTED, path + ": scheduler " + cls + " is not ported to the C++ runtime (it runs "
                "FlowMatchEulerDiscreteScheduler); use the Python runtime for this bundle");
  out.num_train_timesteps = c.value("num_train_timesteps", 1000);
  out.shift = c.value("shift", 1.0);
  out.base_shift = c.value("base_shift", 0.5);
  out.max_shift = c.value("max_shift", 1.15);
  out.base_image_seq_len = c.value("base_image_seq_len", 256);
  out.max_image_seq_len = c.value("max_image_seq_len", 4096);
  out.dynamic_shifting = c.value("use_dynamic_shifting", false);
  out.time_shift_type = c.value("time_shift_type", std::string("exponential"));
  if (out.time_shift_type != "exponential" && out.time_shift_type != "linear")
    throw Error(DDIT_ERR_UNSUPPORTED, path + ": time_shift_type '" + out.time_shift_type + "' is not ported");
  return out;
}

// A constant table: rows [name, offset, length, dtype, dims] (export/aoti.py ConstantsWriter.add).
static std::vector<Constant> read_constants(const json& rows) {
  std::vector<Constant> out;
  for (const auto& c : rows)
    out.push_back({c.at(0).get<std::string>(), c.at(3).get<std::string>(), c.at(1).get<uint64_t>(),
                   c.at(2).get<uint64_t>(), c.at(4).get<std::vector<int64_t>>()});
  return out;
}

// aoti.vae_decoder (kind "flux" bundles built with --backend aoti and a VAE): optional
static void read_vae_decoder(const json& a, Bundle& b) {
  if (!a.contains("vae_decoder") || a["vae_decoder"].is_null()) return;
  b.vae_decoder.model = a["vae_decoder"].at("model").get<std::string>();
  b.vae_decoder.constants = read_constants(a["vae_decoder"].at("constants"));
  b.has_vae_decoder = true;
}

Bundle read_bundle(const std::string& folder) {
  struct stat st;
  if (stat(folder.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) throw bundle_error("bundle folder not found: " + folder);
  const std::string path = folder + "/manifest.json";
  std::ifstream f(path);
  if (!f) throw bundle_error("not a bundle: " + path + " is missing");
  json d;
  try {
    d = json::parse(f);
  } catch (const json::exception& e) {
    throw bundle_error(path + ": not valid JSON (" + e.what() + ")");
  }
  if (!d.is_object() || d.value("format", std::string()) != "ddit-bundle")
    throw bundle_error(path + ": field 'format' is not 'ddit-bundle'");
  if (!d.contains("format_version") || !d["format_version"].is_number_integer())
    throw bundle_error(path + ": field 'format_version' is missing or not an integer");
  const int version = d["format_version"].get<int>();
  if (version > kFormatVersion)
    throw bundle_error(path + ": bundle format version " + std::to_string(version) +
                       " is newer than this runtime reads (" + std::to_string(kFormatVersion) +
                       "); upgrade the runtime or rebuild the bundle");
  if (d.contains("precision") && d["precision"].is_string()) {  // quantized bundles (issue 22): QDQ ONNX graphs
    const std::string p = d["precision"].get<std::string>();
    if (p != "fp32" && p != "fp16" && p != "bf16")
      throw Error(DDIT_ERR_UNSUPPORTED, path + ": a " + p + " (quantized) bundle runs on ONNX Runtime only; the C++ "
                  "runtime runs AOTInductor packages of fp32 bundles: build one with `ddit-export build --backend aoti`");
  }
  if (!d.contains("aoti") || d["aoti"].is_null())
    throw bundle_error(path + ": the bundle has no AOTInductor package; rebuild it with "
                       "`ddit-export build --backend aoti`");
  Bundle b;
  b.folder = folder;
  try {
    const json& a = d.at("aoti");
    const int av = a.at("aoti_version").get<int>();
    if (av > kAotiVersion)
      throw bundle_error(path + ": AOTInductor section version " + std::to_string(av) +
                         " is newer than this runtime reads (" + std::to_string(kAotiVersion) +
                         "); upgrade the runtime or rebuild with --backend aoti");
    b.package = a.at("package").get<std::string>();
    b.device = a.at("device").get<std::string>();
    b.dtype = a.at("dtype").get<std::string>();
    b.inputs = a.at("inputs").get<std::vector<std::string>>();
    for (const auto& v : a.at("variants")) {
      AotiVariant av_;
      av_.size = v.at("size").get<int>();
      av_.model = v.at("model").get<std::string>();
      av_.constants = read_constants(v.at("constants"));
      b.variants.push_back(std::move(av_));
    }
    if (a.contains("text_encoder") && !a["text_encoder"].is_null()) {  // bundles built before it: prompts refused
      const json& t = a.at("text_encoder");
      b.has_text_model = true;
      b.text_model.size = 0;
      b.text_model.model = t.at("model").get<std::string>();
      b.text_model.constants = read_constants(t.at("constants"));
    }
    if (d.contains("text_encoder") && !d["text_encoder"].is_null()) {
      b.vocab = d["text_encoder"].at("vocab").get<std::vector<std::string>>();
      b.max_words = d["text_encoder"].at("max_length").get<int>();
    }
    read_vae_decoder(a, b);
    const json& m = d.at("model");
    b.kind = m.value("kind", std::string());
    b.height = m.at("height").get<int>();
    b.width = m.at("width").get<int>();
    b.vae_scale = m.at("vae_scale").get<int>();
    b.latent_channels = m.at("latent_channels").get<int>();
    b.text_len = m.at("text_len").get<int>();
    b.default_steps = m.at("default_steps").get<int>();
    b.guidance_embeds = m.at("guidance_embeds").get<bool>();
    const json& tc = m.at("transformer_config");
    b.video = b.kind == "wan-pixel" || b.kind == "wan";
    if (b.video && version < 2)
      throw bundle_error(path + ": a video bundle (kind '" + b.kind + "') needs format_version >= 2");
    if (b.video) {  // Wan: text states only (no pooled text, no position ids)
      b.wan = read_wan_dims(tc);
      b.joint_dim = int(b.wan.text_dim);
      b.pooled_dim = 0;
      video_grid(m, b, path);
    } else {
      b.joint_dim = tc.at("joint_attention_dim").get<int>();
      b.pooled_dim = tc.at("pooled_projection_dim").get<int>();
      b.dims = read_dims(tc);
    }
    b.scheduler = read_scheduler(m.at("scheduler_config"), path);
    b.schedule = read_schedule(d.at("schedule"));
    b.name = m.value("name", std::string());
    b.lora_rank = m.value("lora_rank", 0);
    b.files = d.at("files").get<std::map<std::string, std::string>>();
    if (d.contains("cache") && !d["cache"].is_null()) b.cache = read_cache(d["cache"], path);
  } catch (const json::exception& e) {
    throw bundle_error(path + ": missing or malformed field (" + e.what() + ")");
  }
  if (!b.video) {  // the token grid, as shapes.TokenGeometry has it: pixels / vae_scale latents, packed 2x2
    b.grid_h = b.height / b.vae_scale / 2;
    b.grid_w = b.width / b.vae_scale / 2;
  }
  if (b.grid_h < 1 || b.grid_w < 1 || b.variants.empty()) throw bundle_error(path + ": no token grid or no variants");
  // bf16: the package's inputs are cast at each call and its velocity back to float32 (aoti_backend.cpp)
  if (b.dtype != "fp32" && b.dtype != "bf16")
    throw Error(DDIT_ERR_UNSUPPORTED, path + ": the C++ runtime runs fp32 and bf16 bundles; this is " + b.dtype +
                                          " (rebuild with --dtype bf16 or fp32)");
  return b;
}

int64_t Bundle::step_flops(int k, int64_t lora_rank, int64_t batch) const {
  return video ? wan_step_flops(wan, tokens(), text_len, k, lora_rank, batch)
               : ddit::step_flops(dims, tokens(), text_len, k, lora_rank, batch);
}

std::vector<std::string> runtime_files(const Bundle& b) { return {"weights.bin", b.package}; }

void verify_files(const Bundle& b) {
  for (const auto& rel : runtime_files(b)) {
    const std::string p = b.folder + "/" + rel;
    auto it = b.files.find(rel);
    if (it == b.files.end())
      throw bundle_error(b.folder + "/manifest.json: 'files' has no sha256 for " + rel +
                         ", which the runtime reads; the bundle cannot be verified: rebuild it");
    if (sha256_file(p) != it->second)
      throw bundle_error("sha256 mismatch: " + p + " (differs from manifest.json; the file is damaged or was "
                         "changed after the build)");
  }
}

std::vector<float> flux_sigmas(const SchedulerConfig& c, int steps, int image_tokens) {
  // diffusers: sigmas = float32(linspace(1, 1/steps, steps)), then the shift in float32 numpy arithmetic
  const double m = (c.max_shift - c.base_shift) / double(c.max_image_seq_len - c.base_image_seq_len);
  const double mu = image_tokens * m + (c.base_shift - m * c.base_image_seq_len);
  std::vector<float> out(steps + 1, 0.0f);
  const double last = 1.0 / steps;
  for (int i = 0; i < steps; ++i) {
    const double lin = steps == 1 ? 1.0 : 1.0 + (last - 1.0) * double(i) / double(steps - 1);
    const float t = float(lin);
    float s;
    if (c.dynamic_shifting) {
      const float x = 1.0f / t - 1.0f;  // (1/t - 1) ** 1.0
      if (c.time_shift_type == "exponential") {
        const float e = float(std::exp(mu));
        s = e / (e + x);
      } else {
        const float fm = float(mu);
        s = fm / (fm + x);
      }
    } else {
      const float sh = float(c.shift);
      s = sh * t / (1.0f + (sh - 1.0f) * t);
    }
    out[i] = s;
  }
  return out;
}

MappedFile::MappedFile(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) throw bundle_error("bundle file missing: " + path);
  struct stat st;
  if (fstat(fd, &st) != 0 || st.st_size == 0) {
    ::close(fd);
    throw bundle_error("cannot read " + path);
  }
  size_ = size_t(st.st_size);
  void* p = mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (p == MAP_FAILED) throw bundle_error("cannot map " + path + ": " + std::strerror(errno));
  data_ = static_cast<uint8_t*>(p);
}

MappedFile::~MappedFile() {
  if (data_) munmap(data_, size_);
}

}  // namespace ddit
