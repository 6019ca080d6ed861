// The one interface every C++ backend implements: run patch-size variant k on fine-token latents. AOTInductor is
// the one here (aoti_backend.cpp); a TensorRT backend (engines from `build --backend trt`) can sit beside it and
// be chosen in make_backend without the loop or the scheduler knowing.
#pragma once
#include <ATen/ATen.h>

#include <memory>
#include <string>
#include <vector>

#include "bundle.h"
#include "error.h"

namespace ddit {

struct StepInputs {  // the transformer's inputs, named as in the manifest; latents always in fine-token form
  at::Tensor hidden_states, encoder_hidden_states, pooled_projections, timestep, img_ids, txt_ids, guidance;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  virtual std::vector<int> sizes() const = 0;
  virtual at::Device device() const = 0;
  // velocity (B, tokens, channels), float32, on device()
  virtual at::Tensor run(int size, const StepInputs& in) = 0;
  // The word encoder compiled into the package (pixel bundles): ids (B, L) int64 and mask (B, L) bool on device()
  // -> {states (B, L, joint_dim), pooled (B, pooled_dim)}. Backends without one keep these defaults.
  virtual bool has_text_encoder() const { return false; }
  virtual std::vector<at::Tensor> encode(const at::Tensor& ids, const at::Tensor& mask) {
    throw Error(DDIT_ERR_BUNDLE, "backend " + name() + " has no text encoder");
  }
  // A FLUX bundle's VAE decoder compiled into the package: final latents (B, tokens, channels) float32 -> image
  // (B, H, W, 3) float32 in [0, 1] on the CPU. Backends without one keep these defaults.
  virtual bool has_decoder() const { return false; }
  virtual at::Tensor decode(const at::Tensor& latents) {
    throw Error(DDIT_ERR_BUNDLE, "backend " + name() + " has no VAE decoder");
  }
};

// The AOTInductor backend for `sizes` of the bundle (all if empty); weights.bin mapped once, shared by all.
std::unique_ptr<Backend> make_aoti_backend(const Bundle& b, const std::vector<int>& sizes);

}  // namespace ddit
