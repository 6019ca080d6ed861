// Prompts in, pixels out: the word tokenizer (ddit_export/models/text.py, ported), the package's compiled word
// encoder behind ddit_encode and request.prompts, and ddit_decode (images.pixels_to_pil for pixel models; a hook
// for a FLUX bundle's compiled VAE decoder).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "runtime.h"

namespace ddit {

// models/text.py tokenize: word ids (n, max_length) row-major, word i of `vocab` is id i + 1, 0 is padding (the
// mask is ids != 0). Throws argument_error with VocabularyError's message: characters other than letters, spaces
// and . , ; : ! ? ' " ( ) -, words not in the vocabulary (sorted), more than max_length words, an empty prompt.
std::vector<int64_t> tokenize(const std::vector<std::string>& vocab, int max_length,
                              const std::vector<std::string>& prompts);

// Python's repr() of a str given as UTF-8 (the quotes and escapes the Python messages show).
std::string py_repr(const std::string& utf8);

// The request with request.prompts encoded: `q` itself without prompts, else a copy held in `store` whose
// states/pooled point into store's vectors.
struct PromptEmbeddings {
  ddit_request request{};
  std::vector<float> states, pooled;
};
const ddit_request& with_prompts(ddit_runtime* rt, const ddit_request& q, PromptEmbeddings& store);

// 1: ddit_decode works on this runtime (a pixel model, or a compiled VAE decoder).
bool has_decoder(const ddit_runtime& rt);

// A FLUX bundle's compiled VAE decoder (defined in vae.cpp, which loads it at open);
// ddit_decode / ddit_generate call them for non-pixel bundles.
// latents: (batch, tokens, channels) float32 on the CPU; pixels: batch * height * width * 3 (RGB, uint8).
bool has_vae_decoder(const ddit_runtime& rt);
void decode_with_vae(ddit_runtime& rt, const at::Tensor& latents, uint8_t* pixels);

}  // namespace ddit
