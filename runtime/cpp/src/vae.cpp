// The compiled FLUX VAE decoder (vae.h) over the backend's decoder model: the shape check and the uint8
// conversion, and ddit_decode's branch for FLUX bundles.
#include "vae.h"
#include "text_image.h"

#include <c10/core/InferenceMode.h>

#include <cstring>
#include <sstream>

#include "error.h"
#include "runtime.h"

namespace ddit {

at::Tensor decode_vae(ddit_runtime* rt, const at::Tensor& latents) {
  need(rt, "runtime");
  if (!rt->backend->has_decoder())
    throw bundle_error("this bundle has no compiled VAE decoder (manifest aoti.vae_decoder): rebuild a FLUX bundle "
                       "with `ddit-export build --model flux --weights DIR --backend aoti`");
  const Bundle& b = rt->bundle;
  if (latents.dim() != 3 || latents.size(1) != b.tokens() || latents.size(2) != b.channels()) {
    std::ostringstream m;
    m << "VAE decoder: latents must be (batch, " << b.tokens() << ", " << b.channels() << "), got " << latents.sizes();
    throw argument_error(m.str());
  }
  c10::InferenceMode guard;
  return rt->backend->decode(latents);
}

at::Tensor image_to_uint8(const at::Tensor& image) {
  return (image.to(at::kCPU, at::kFloat) * 255.0f).round().clamp(0, 255).to(at::kByte).contiguous();
}

// ddit_decode's branch for FLUX bundles (text_image.h)
bool has_vae_decoder(const ddit_runtime& rt) { return rt.backend->has_decoder(); }

void decode_with_vae(ddit_runtime& rt, const at::Tensor& latents, uint8_t* pixels) {
  use_threads(&rt);
  at::Tensor px = image_to_uint8(decode_vae(&rt, latents));
  std::memcpy(pixels, px.data_ptr<uint8_t>(), size_t(px.numel()));
}

}  // namespace ddit
