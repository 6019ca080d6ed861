// ddit_encode, ddit_decode, ddit_generate and the word tokenizer behind request.prompts (see text_image.h).
#include "text_image.h"

#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <set>
#include <sstream>

using ddit::argument_error;
using ddit::guarded;
using ddit::need;

namespace ddit {
namespace {

// UTF-8 -> code points; a byte sequence that is not UTF-8 is an argument error.
std::vector<uint32_t> code_points(const std::string& s) {
  std::vector<uint32_t> out;
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    const int n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 0;
    if (n == 0 || i + n > s.size()) throw argument_error("prompt is not valid UTF-8");
    uint32_t cp = n == 1 ? c : c & (0x7f >> n);
    for (int j = 1; j < n; ++j) {
      const auto d = static_cast<unsigned char>(s[i + j]);
      if ((d >> 6) != 0x2) throw argument_error("prompt is not valid UTF-8");
      cp = (cp << 6) | (d & 0x3f);
    }
    out.push_back(cp);
    i += n;
  }
  return out;
}

std::string utf8(uint32_t cp) {
  std::string o;
  if (cp < 0x80) {
    o += char(cp);
  } else if (cp < 0x800) {
    o += char(0xc0 | (cp >> 6)), o += char(0x80 | (cp & 0x3f));
  } else if (cp < 0x10000) {
    o += char(0xe0 | (cp >> 12)), o += char(0x80 | ((cp >> 6) & 0x3f)), o += char(0x80 | (cp & 0x3f));
  } else {
    o += char(0xf0 | (cp >> 18)), o += char(0x80 | ((cp >> 12) & 0x3f)), o += char(0x80 | ((cp >> 6) & 0x3f));
    o += char(0x80 | (cp & 0x3f));
  }
  return o;
}

// Python's str.isspace() (what `\s` matches in a str pattern).
bool is_space(uint32_t c) {
  return (c >= 0x9 && c <= 0xd) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f || c == 0x205f || c == 0x3000;
}

// Python's str.isprintable() for the characters a prompt plausibly holds (controls, format characters, spaces
// other than ' ', private use are not printable).
bool is_printable(uint32_t c) {
  if (c < 0x20 || (c >= 0x7f && c <= 0xa0) || c == 0xad) return false;
  if (c != ' ' && is_space(c)) return false;
  if ((c >= 0x200b && c <= 0x200f) || (c >= 0x202a && c <= 0x202e) || (c >= 0x2060 && c <= 0x206f) ||
      c == 0xfeff || (c >= 0xfff9 && c <= 0xfffb) || (c >= 0xd800 && c <= 0xf8ff))
    return false;
  return true;
}

bool is_word(uint32_t c) { return c >= 'a' && c <= 'z'; }
bool is_punct(uint32_t c) { return c < 0x80 && std::strchr(".,;:!?'\"()-", int(c)) && c != 0; }

std::string repr(const std::vector<uint32_t>& cps) {
  const bool single = std::find(cps.begin(), cps.end(), uint32_t('\'')) != cps.end();
  const bool dbl = std::find(cps.begin(), cps.end(), uint32_t('"')) != cps.end();
  const char quote = single && !dbl ? '"' : '\'';
  std::string o(1, quote);
  char buf[16];
  for (uint32_t c : cps) {
    if (c == uint32_t(quote) || c == '\\') {
      o += '\\', o += char(c);
    } else if (c == '\t') {
      o += "\\t";
    } else if (c == '\n') {
      o += "\\n";
    } else if (c == '\r') {
      o += "\\r";
    } else if (is_printable(c)) {
      o += utf8(c);
    } else {
      std::snprintf(buf, sizeof buf, c <= 0xff ? "\\x%02x" : c <= 0xffff ? "\\u%04x" : "\\U%08x", unsigned(c));
      o += buf;
    }
  }
  return o + quote;
}

// words_of: the lower-cased words of a prompt; any character but letters a-z, spaces and punctuation is an error.
std::vector<std::string> words_of(const std::string& prompt) {
  std::vector<uint32_t> low = code_points(prompt);
  for (auto& c : low)
    if (c >= 'A' && c <= 'Z') c += 'a' - 'A';
  std::set<uint32_t> odd;
  for (uint32_t c : low)
    if (!is_word(c) && !is_space(c) && !is_punct(c)) odd.insert(c);
  if (!odd.empty()) {
    std::string names;
    for (uint32_t c : odd) names += (names.empty() ? "" : " ") + repr({c});
    throw argument_error("prompt " + py_repr(prompt) + " has characters this model's word tokenizer cannot read: " +
                         names + " (it reads words of the letters a-z; spell numbers out)");
  }
  std::vector<std::string> words;
  std::string w;
  for (uint32_t c : low) {
    if (is_word(c)) {
      w += char(c);
    } else if (!w.empty()) {
      words.push_back(w);
      w.clear();
    }
  }
  if (!w.empty()) words.push_back(w);
  return words;
}

void check_len(const char* what, size_t got, size_t want) {
  if (got != want) {
    std::ostringstream m;
    m << what << " has " << got << " elements; this bundle needs " << want;
    throw argument_error(m.str());
  }
}

std::vector<std::string> prompt_list(const char* const* prompts, int n) {
  need(prompts, "prompts");
  if (n < 1) throw argument_error("give at least one prompt");
  std::vector<std::string> out;
  for (int i = 0; i < n; ++i) {
    if (!prompts[i]) throw argument_error("prompts[" + std::to_string(i) + "] is NULL");
    out.emplace_back(prompts[i]);
  }
  return out;
}

// The bundle's word encoder on `prompts`: states (n, text_len, joint_dim) and pooled (n, pooled_dim), float32.
void encode(ddit_runtime* rt, const std::vector<std::string>& prompts, float* states, float* pooled) {
  const Bundle& b = rt->bundle;
  if (!rt->backend->has_text_encoder()) {
    if (b.vocab.empty())
      throw bundle_error("this bundle has no word text encoder (a " + b.kind +
                         " bundle takes text embeddings: give request.states and request.pooled)");
    throw bundle_error("this bundle's AOTInductor package has no text encoder (built before it was compiled in); "
                       "rebuild it with `ddit-export build --backend aoti`");
  }
  const auto n = int64_t(prompts.size());
  const std::vector<int64_t> ids = tokenize(b.vocab, b.max_words, prompts);
  ddit::use_threads(rt);  // the handle's thread count, as for the denoise loop
  c10::InferenceMode guard;
  const at::Device dev = rt->backend->device();
  at::Tensor t = at::from_blob(const_cast<int64_t*>(ids.data()), {n, b.max_words}, at::kLong).to(dev).contiguous();
  at::Tensor mask = t.ne(0).contiguous();
  auto out = rt->backend->encode(t, mask);
  // a Wan bundle's transformer takes the states only: the encoder's pooled output is dropped (pooled_dim 0)
  at::Tensor s = out[0].to(at::kCPU).to(at::kFloat).contiguous();
  at::Tensor p = b.pooled_dim ? out[1].to(at::kCPU).to(at::kFloat).contiguous() : at::empty({0}, at::kFloat);
  if (s.numel() != n * b.text_len * b.joint_dim || p.numel() != n * b.pooled_dim)
    throw bundle_error("the text encoder's outputs do not match the transformer's text_len/joint_dim/pooled_dim: "
                       "rebuild the bundle");
  std::memcpy(states, s.data_ptr<float>(), size_t(s.numel()) * sizeof(float));
  if (p.numel()) std::memcpy(pooled, p.data_ptr<float>(), size_t(p.numel()) * sizeof(float));
}

// images.pixels_to_pil: (B, h*w, C*4) fine tokens -> (B, H, W, C) uint8, FLUX's 2x2 packing inverted, clipped to
// [-1, 1] and scaled as numpy does it in float32 ((x + 1) * 127.5, rounded half to even).
void pixels_to_rgb(const Bundle& b, const float* x, int batch, uint8_t* out) {
  const int h = b.grid_h, w = b.grid_w, c = b.latent_channels, H = 2 * h, W = 2 * w;
  for (int n = 0; n < batch; ++n)
    for (int y = 0; y < H; ++y)
      for (int xx = 0; xx < W; ++xx)
        for (int ch = 0; ch < c; ++ch) {
          const size_t token = size_t(n) * h * w + size_t(y / 2) * w + size_t(xx / 2);
          float v = x[token * size_t(4 * c) + size_t(ch * 4 + (y % 2) * 2 + (xx % 2))];
          v = std::isnan(v) ? 0.0f : std::min(std::max(v, -1.0f), 1.0f);
          const float s = (v + 1.0f) * 127.5f;
          out[((size_t(n) * H + y) * W + xx) * c + ch] = uint8_t(std::nearbyint(s));
        }
}

// models/wan.py video_pixels_to_frames: (B, F*h*w, pt*ph*pw*C) fine video tokens (channels (t, y, x, c)) -> (B,
// frames, H, W, C) uint8, clipped and scaled as pixels_to_rgb does.
void video_pixels_to_rgb(const Bundle& b, const float* x, int batch, uint8_t* out) {
  const int gh = b.grid_h, gw = b.grid_w, pt = b.patch_t, ph = b.patch_h, pw = b.patch_w, c = b.latent_channels;
  const int F = b.frames, H = b.height, W = b.width;
  const size_t ct = size_t(pt) * ph * pw * c;
  for (int n = 0; n < batch; ++n)
    for (int f = 0; f < F; ++f)
      for (int y = 0; y < H; ++y)
        for (int xx = 0; xx < W; ++xx)
          for (int ch = 0; ch < c; ++ch) {
            const size_t token = (size_t(n) * b.grid_f + f / pt) * gh * gw + size_t(y / ph) * gw + size_t(xx / pw);
            float v = x[token * ct + ((size_t(f % pt) * ph + y % ph) * pw + xx % pw) * c + ch];
            v = std::isnan(v) ? 0.0f : std::min(std::max(v, -1.0f), 1.0f);
            out[(((size_t(n) * F + f) * H + y) * W + xx) * c + ch] = uint8_t(std::nearbyint((v + 1.0f) * 127.5f));
          }
}

void decode(ddit_runtime* rt, const float* latents, size_t latents_len, int batch, uint8_t* pixels,
            size_t pixels_len) {
  const Bundle& b = rt->bundle;
  need(latents, "latents");
  need(pixels, "pixels");
  if (batch < 1) throw argument_error("batch must be >= 1");
  check_len("latents", latents_len, size_t(batch) * b.tokens() * b.channels());
  check_len("pixels", pixels_len, size_t(batch) * b.pixels_per_sample());
  if (b.kind == "wan-pixel") {
    if (b.latent_channels != 3 || b.vae_scale != 1 || b.vae_temporal != 1)
      throw bundle_error("a wan-pixel bundle with " + std::to_string(b.latent_channels) + " channels is not RGB");
    video_pixels_to_rgb(b, latents, batch, pixels);
  } else if (b.kind == "pixel") {
    if (b.latent_channels != 3 || b.vae_scale != 1)
      throw bundle_error("a pixel bundle with " + std::to_string(b.latent_channels) + " channels is not RGB");
    pixels_to_rgb(b, latents, batch, pixels);
  } else if (has_vae_decoder(*rt)) {
    at::Tensor x = at::from_blob(const_cast<float*>(latents), {batch, b.tokens(), b.channels()}, at::kFloat);
    decode_with_vae(*rt, x, pixels);
  } else {
    throw Error(DDIT_ERR_UNSUPPORTED, "no decoder in this bundle (a " + b.kind +
                                          " bundle without a compiled VAE decoder returns latents only)");
  }
}

}  // namespace

std::vector<int64_t> tokenize(const std::vector<std::string>& vocab, int max_length,
                              const std::vector<std::string>& prompts) {
  std::map<std::string, int64_t> id;
  for (size_t i = 0; i < vocab.size(); ++i) id.emplace(vocab[i], int64_t(i) + 1);
  std::vector<std::vector<std::string>> rows;
  for (const auto& p : prompts) rows.push_back(words_of(p));
  std::set<std::string> unknown;
  size_t longest = 0;
  bool empty = false;
  for (const auto& r : rows) {
    for (const auto& w : r)
      if (!id.count(w)) unknown.insert(w);
    longest = std::max(longest, r.size());
    empty = empty || r.empty();
  }
  if (!unknown.empty()) {
    std::string names;
    for (const auto& w : unknown) names += (names.empty() ? "" : ", ") + w;
    throw argument_error("words not in the model's vocabulary: " + names);
  }
  if (longest > size_t(max_length))
    throw argument_error("prompt has " + std::to_string(longest) + " words; this model reads at most " +
                         std::to_string(max_length));
  if (empty) throw argument_error("empty prompt");
  std::vector<int64_t> ids(rows.size() * size_t(max_length), 0);
  for (size_t i = 0; i < rows.size(); ++i)
    for (size_t j = 0; j < rows[i].size(); ++j) ids[i * max_length + j] = id[rows[i][j]];
  return ids;
}

std::string py_repr(const std::string& s) { return repr(code_points(s)); }

const ddit_request& with_prompts(ddit_runtime* rt, const ddit_request& q, PromptEmbeddings& store) {
  if (!q.prompts) return q;
  if (q.states || q.pooled) throw argument_error("give request.prompts or request.states/pooled, not both");
  if (q.batch < 1) throw argument_error("batch must be >= 1");
  const Bundle& b = rt->bundle;
  store.states.resize(size_t(q.batch) * b.text_len * b.joint_dim);
  store.pooled.resize(size_t(q.batch) * b.pooled_dim);
  encode(rt, prompt_list(q.prompts, q.batch), store.states.data(), store.pooled.data());
  store.request = q;
  store.request.prompts = nullptr;
  store.request.states = store.states.data(), store.request.states_len = store.states.size();
  store.request.pooled = store.pooled.data(), store.request.pooled_len = store.pooled.size();
  return store.request;
}

bool has_decoder(const ddit_runtime& rt) {
  const auto& b = rt.bundle;
  return ((b.kind == "pixel" || b.kind == "wan-pixel") && b.latent_channels == 3) || has_vae_decoder(rt);
}

}  // namespace ddit

extern "C" {

int ddit_encode(ddit_runtime* rt, const char* const* prompts, int n, float* states, size_t states_len,
                float* pooled, size_t pooled_len) {
  return guarded([&] {
    need(rt, "runtime");
    need(states, "states");
    const ddit::Bundle& b = rt->bundle;
    if (b.pooled_dim) need(pooled, "pooled");  // a video bundle has none: pooled may be NULL, pooled_len 0
    const auto list = ddit::prompt_list(prompts, n);
    ddit::check_len("states", states_len, size_t(n) * b.text_len * b.joint_dim);
    ddit::check_len("pooled", pooled_len, size_t(n) * b.pooled_dim);
    ddit::encode(rt, list, states, pooled);
  });
}

int ddit_decode(ddit_runtime* rt, const float* latents, size_t latents_len, int batch, uint8_t* pixels,
                size_t pixels_len) {
  return guarded([&] {
    need(rt, "runtime");
    ddit::decode(rt, latents, latents_len, batch, pixels, pixels_len);
  });
}

int ddit_generate(ddit_runtime* rt, const ddit_request* req, uint8_t* pixels, size_t pixels_len) {
  return guarded([&] {
    need(rt, "runtime");
    need(req, "request");
    need(pixels, "pixels");
    const ddit::Bundle& b = rt->bundle;
    if (req->batch < 1) throw argument_error("batch must be >= 1");
    ddit::check_len("pixels", pixels_len, size_t(req->batch) * b.pixels_per_sample());
    if (!ddit::has_decoder(*rt))
      throw ddit::Error(DDIT_ERR_UNSUPPORTED, "no decoder in this bundle (a " + b.kind +
                                                  " bundle without a compiled VAE decoder): use ddit_denoise");
    std::vector<float> latents(size_t(req->batch) * b.tokens() * b.channels());
    const int rc = ddit_denoise(rt, req, latents.data(), latents.size());
    if (rc != DDIT_OK) throw ddit::Error(ddit_status(rc), ddit::last_error());
    ddit::decode(rt, latents.data(), latents.size(), req->batch, pixels, pixels_len);
  });
}

}  // extern "C"
