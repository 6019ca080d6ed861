#include "flops.h"

namespace ddit {
namespace {
int64_t lin(int64_t tokens, int64_t i, int64_t o) { return 2 * tokens * i * o; }
}  // namespace

int64_t step_flops(const FluxDims& m, int64_t image_tokens, int64_t text_tokens, int64_t k, int64_t lora_rank,
                   int64_t batch) {
  const int64_t d = m.width, t = text_tokens, n = image_tokens / (k * k), seq = n + t;
  const int64_t r = k > 1 ? lora_rank : 0;
  // conditioning: timestep (and guidance) MLPs 256->d->d, pooled text projection, per sample
  int64_t f = (m.guidance ? 2 : 1) * (lin(1, 256, d) + lin(1, d, d)) + lin(1, m.pooled_dim, d) + lin(1, d, d);
  f += lin(t, m.joint_dim, d);  // context_embedder
  const int64_t cin = k * k * m.in_channels, cout = k * k * m.out_channels;
  f += lin(n, cin, d) + lin(n, d, cout);  // stem and head of this size
  if (k > 1) f += lin(n, cin, cout);      // residual block
  const int64_t attn = 2 * 2 * seq * seq * d;
  const int64_t dbl = 2 * lin(1, d, 6 * d) + 4 * lin(n, d, d) + 4 * lin(t, d, d) + attn + lin(n, d, 4 * d) +
                      lin(n, 4 * d, d) + lin(t, d, 4 * d) + lin(t, 4 * d, d) +
                      (r ? lin(n, d, r) + lin(n, r, 4 * d) + lin(n, 4 * d, r) + lin(n, r, d) : 0);
  const int64_t single = lin(1, d, 3 * d) + 3 * lin(seq, d, d) + attn + lin(seq, d, 4 * d) + lin(seq, 5 * d, d) +
                         (r ? lin(seq, d, r) + lin(seq, r, 4 * d) + lin(seq, 5 * d, r) + lin(seq, r, d) : 0);
  f += m.double_blocks * dbl + m.single_blocks * single + lin(1, d, 2 * d);  // + norm_out modulation
  return batch * f;
}

// flops.wan_step_flops: per block self-attention, cross-attention to the text, the feed-forward and (k > 1) its
// LoRA; once per call the timestep MLP and its 6-way projection, the text embedder, this size's stem and head.
int64_t wan_step_flops(const WanDims& m, int64_t tokens, int64_t text_tokens, int64_t k, int64_t lora_rank,
                       int64_t batch) {
  const int64_t d = m.width, t = text_tokens, n = tokens / (k * k), r = k > 1 ? lora_rank : 0;
  int64_t f = lin(1, m.freq_dim, d) + lin(1, d, d) + lin(1, d, 6 * d);
  f += lin(t, m.text_dim, d) + lin(t, d, d);
  const int64_t cin = k * k * m.in_channels * m.patch, cout = k * k * m.out_channels * m.patch;
  f += lin(n, cin, d) + lin(n, d, cout);
  if (k > 1) f += lin(n, cin, cout);
  const int64_t block = 4 * lin(n, d, d) + 2 * 2 * n * n * d + 2 * lin(n, d, d) + 2 * lin(t, d, d) + 2 * 2 * n * t * d +
                        lin(n, d, m.ffn_dim) + lin(n, m.ffn_dim, d) +
                        (r ? lin(n, d, r) + lin(n, r, m.ffn_dim) + lin(n, m.ffn_dim, r) + lin(n, r, d) : 0);
  f += m.layers * block;
  return batch * f;
}

}  // namespace ddit
