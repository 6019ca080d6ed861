// FLUX's VAE decoder compiled into the bundle's AOTInductor package (model "vae_decoder", manifest
// aoti.vae_decoder; ddit_export/export/aoti.py VaeDecodeModule), loaded by the backend beside the transformer
// variants with the same views of weights.bin: final fine-token latents -> RGB pixels, as the Python FLUX model
// decodes them (unpack, / scaling_factor + shift_factor, vae.decode, denormalize) and then diffusers' numpy_to_pil
// converts them (round(x * 255) to uint8).
#pragma once
#include <ATen/ATen.h>

struct ddit_runtime;

namespace ddit {

// latents (B, tokens, channels) float32 (any device) -> image (B, height, width, 3) float32 in [0, 1], on the CPU.
// Throws bundle_error when the runtime has no VAE decoder, argument_error on a wrong shape.
at::Tensor decode_vae(ddit_runtime* rt, const at::Tensor& latents);

// image (B, H, W, 3) float in [0, 1] -> uint8 (B, H, W, 3) contiguous on the CPU: round(x * 255), half to even,
// as numpy does in diffusers' numpy_to_pil.
at::Tensor image_to_uint8(const at::Tensor& image);

}  // namespace ddit
