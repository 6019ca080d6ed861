// The bundle as the C++ runtime reads it: manifest.json (format and aoti section versions checked as the Python
// reader does), the AOTInductor constant tables, and weights.bin mapped once. No torch here.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "cache_settings.h"
#include "flops.h"
#include "scheduler.h"

namespace ddit {

constexpr int kFormatVersion = 2;  // ddit_export/bundle.py FORMAT_VERSION (2: video bundles, model.frames)
constexpr int kAotiVersion = 1;    // ddit_export/bundle.py AOTI_VERSION

struct Constant {
  std::string name, dtype;
  uint64_t offset = 0, length = 0;
  std::vector<int64_t> dims;
};

struct AotiVariant {
  int size = 1;
  std::string model;  // model name inside the package
  std::vector<Constant> constants;
};

struct SchedulerConfig {  // diffusers FlowMatchEulerDiscreteScheduler config fields the sigmas need
  int num_train_timesteps = 1000;
  double shift = 1.0, base_shift = 0.5, max_shift = 1.15;
  int base_image_seq_len = 256, max_image_seq_len = 4096;
  bool dynamic_shifting = true;
  std::string time_shift_type = "exponential";
};

struct Bundle {
  std::string folder;
  std::string kind;                 // model.kind: "pixel" (decoded by images.pixels_to_pil), "flux", "wan-pixel", "wan"
  bool video = false;               // kind "wan-pixel" / "wan" (bundle.py VIDEO_KINDS): Wan graphs, (F, h, w) grids
  int frames = 0;                   // video: pixel frames of a clip (model.frames); 0 for images
  int vae_temporal = 1;             // video: the VAE's temporal factor (Wan 2.1: 4; pixel models 1)
  int patch_t = 1, patch_h = 2, patch_w = 2;  // a fine token's latent patch (FLUX packs 2x2; Wan's patch_size)
  int latent_frames = 1, grid_f = 1;  // video: latent frames and token frames (grid_f = latent_frames / patch_t)
  std::vector<std::string> vocab;   // the word tokenizer (manifest text_encoder; empty without one)
  int max_words = 0;                // its max_length
  bool has_text_model = false;      // the word encoder is compiled into the package (aoti.text_encoder)
  AotiVariant text_model;           // its model name and constants (size 0)
  int height = 0, width = 0, vae_scale = 1, latent_channels = 0, grid_h = 0, grid_w = 0;
  int text_len = 0, joint_dim = 0, pooled_dim = 0, default_steps = 28;
  bool guidance_embeds = false;
  std::string dtype, device, package;
  std::vector<std::string> inputs;
  std::vector<AotiVariant> variants;
  bool has_vae_decoder = false;     // aoti.vae_decoder: FLUX's VAE decoder compiled into the package (vae.cpp)
  AotiVariant vae_decoder;          // its model name and constants (size unused)
  ScheduleSettings schedule;
  SchedulerConfig scheduler;
  std::string name;                          // model.name (a trace's "model")
  FluxDims dims;                             // model.transformer_config, for the FLOPs (FLUX)
  WanDims wan;                               // ... of a video bundle (WanTransformer3DModel)
  int lora_rank = 0;
  CacheSettings cache;                       // the manifest's cache profile ("cache"; absent: off)
  std::map<std::string, std::string> files;  // relative path -> sha256

  int tokens() const { return grid_f * grid_h * grid_w; }
  int channels() const { return latent_channels * patch_t * patch_h * patch_w; }
  int64_t step_flops(int k, int64_t lora_rank, int64_t batch) const;  // flops.py step_flops for this bundle
  int clip_frames() const { return video ? frames : 1; }  // images per sample the decoder makes (1 for an image)
  size_t pixels_per_sample() const { return size_t(clip_frames()) * height * width * 3; }  // RGB uint8
  const AotiVariant& variant(int size) const;
};

// Parse and check manifest.json of `folder`; throws ddit::Error (DDIT_ERR_BUNDLE) naming the file and field.
Bundle read_bundle(const std::string& folder);

// The files of the bundle this runtime reads (weights.bin, the AOTInductor package): what verify_files hashes.
std::vector<std::string> runtime_files(const Bundle& b);

// Check each runtime file's sha256 against the manifest's `files`; throws DDIT_ERR_BUNDLE naming the file.
void verify_files(const Bundle& b);

// FLUX's sigmas for `steps` steps (FluxPipeline: linspace(1, 1/steps) shifted by the resolution's mu), float32 as
// diffusers computes them, with the final 0 appended (steps + 1 values).
std::vector<float> flux_sigmas(const SchedulerConfig& c, int steps, int image_tokens);

// weights.bin mapped once, privately (copy-on-write; nothing writes it), for the life of the runtime.
class MappedFile {
 public:
  explicit MappedFile(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  uint8_t* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace ddit
