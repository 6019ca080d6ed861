// The compiled FLUX VAE decoder (vae.h): its own AOTIModelPackageLoader on the bundle's package, fed its constants
// as user-managed views of weights.bin, as aoti_backend.cpp feeds the transformer variants.
#include "vae.h"
#include "text_image.h"

#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <c10/core/InferenceMode.h>

#include <cstring>
#include <map>
#include <sstream>
#include <tuple>

#include "error.h"
#include "runtime.h"

namespace ddit {

namespace {

at::ScalarType vae_scalar_type(const std::string& dtype) {
  static const std::map<std::string, at::ScalarType> m = {
      {"float32", at::kFloat}, {"float16", at::kHalf}, {"bfloat16", at::kBFloat16}, {"float64", at::kDouble},
      {"int64", at::kLong},    {"int32", at::kInt},    {"int8", at::kChar},         {"uint8", at::kByte},
      {"bool", at::kBool}};
  auto it = m.find(dtype);
  if (it == m.end()) throw bundle_error("constant dtype '" + dtype + "' is not supported");
  return it->second;
}

}  // namespace

class VaeDecoder {
 public:
  VaeDecoder(const Bundle& b, const at::Device& device)
      : weights_(b.folder + "/weights.bin"), device_(device), height_(b.height), width_(b.width),
        tokens_(b.tokens()), channels_(b.channels()) {
    const std::string package = b.folder + "/" + b.package;
    const AotiVariant& v = b.vae_decoder;
    try {
      loader_ = std::make_unique<torch::inductor::AOTIModelPackageLoader>(package, v.model);
    } catch (const std::exception& e) {
      const std::string w = e.what();
      throw bundle_error("cannot load AOTInductor model '" + v.model + "' from " + package + ": " +
                         w.substr(0, w.find('\n')));
    }
    std::unordered_map<std::string, at::Tensor> constants;
    std::map<std::tuple<uint64_t, std::string, std::vector<int64_t>>, at::Tensor> shared;
    for (const auto& c : v.constants) {
      if (c.offset + c.length > weights_.size()) {
        std::ostringstream m;
        m << "weights.bin is truncated: constant '" << c.name << "' ends at byte " << c.offset + c.length
          << ", the file has " << weights_.size();
        throw bundle_error(m.str());
      }
      auto key = std::make_tuple(c.offset, c.dtype, c.dims);
      auto it = shared.find(key);
      if (it == shared.end()) {
        at::Tensor t = at::from_blob(weights_.data() + c.offset, c.dims,
                                     at::TensorOptions().dtype(vae_scalar_type(c.dtype)));
        if (t.nbytes() != c.length) throw bundle_error("constant '" + c.name + "': length does not match its shape");
        if (device_.type() != at::kCPU) t = t.to(device_);
        it = shared.emplace(key, t).first;
      }
      constants[c.name] = it->second;
    }
    for (const auto& n : loader_->get_constant_fqns())
      if (!constants.count(n))
        throw bundle_error("the VAE decoder needs constant '" + n +
                           "', which the manifest's aoti.vae_decoder lacks: rebuild the bundle");
    loader_->load_constants(constants, /*use_inactive=*/false, /*check_full_update=*/true, /*user_managed=*/true);
  }

  at::Tensor run(const at::Tensor& latents) {
    if (latents.dim() != 3 || latents.size(1) != tokens_ || latents.size(2) != channels_) {
      std::ostringstream m;
      m << "VAE decoder: latents must be (batch, " << tokens_ << ", " << channels_ << "), got " << latents.sizes();
      throw argument_error(m.str());
    }
    c10::InferenceMode guard;
    auto out = loader_->run({latents.to(device_, at::kFloat).contiguous()});
    if (out.empty()) throw Error(DDIT_ERR_RUNTIME, "the AOTInductor VAE decoder returned no output");
    return out[0].to(at::kCPU).to(at::kFloat).contiguous();
  }

  int height() const { return height_; }
  int width() const { return width_; }

 private:
  MappedFile weights_;  // before the loader: the constants view it
  at::Device device_;
  int height_, width_, tokens_, channels_;
  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> loader_;
};

std::shared_ptr<VaeDecoder> load_vae_decoder(const Bundle& b, const at::Device& device) {
  if (!b.has_vae_decoder) return nullptr;
  return std::make_shared<VaeDecoder>(b, device);
}

at::Tensor decode_vae(ddit_runtime* rt, const at::Tensor& latents) {
  need(rt, "runtime");
  if (!rt->vae)
    throw bundle_error("this bundle has no compiled VAE decoder (manifest aoti.vae_decoder): rebuild a FLUX bundle "
                       "with `ddit-export build --model flux --weights DIR --backend aoti`");
  return rt->vae->run(latents);
}

at::Tensor image_to_uint8(const at::Tensor& image) {
  return (image.to(at::kCPU, at::kFloat) * 255.0f).round().clamp(0, 255).to(at::kByte).contiguous();
}

// ddit_decode's branch for FLUX bundles (text_image.h)
bool has_vae_decoder(const ddit_runtime& rt) { return rt.vae != nullptr; }

void decode_with_vae(ddit_runtime& rt, const at::Tensor& latents, uint8_t* pixels) {
  use_threads(&rt);
  at::Tensor px = image_to_uint8(decode_vae(&rt, latents));
  std::memcpy(pixels, px.data_ptr<uint8_t>(), size_t(px.numel()));
}

}  // namespace ddit
