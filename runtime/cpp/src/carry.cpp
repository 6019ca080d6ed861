#include "carry.h"

#include "error.h"

namespace ddit {

at::Tensor block_mean(const at::Tensor& v, int gh, int gw, int k, int sub, int gf, bool channels_first) {
  if (v.dim() != 3 || v.size(1) != int64_t(gf) * gh * gw || sub < 1 || v.size(2) % sub != 0 || k < 1 ||
      gh % k != 0 || gw % k != 0 || gf < 1)
    throw argument_error("detail carry: the velocity or the block size does not fit the token grid");
  const int64_t b = v.size(0), ct = v.size(2), c = ct / sub;
  const int64_t h = gh / k, w = gw / k;
  // patching.merge_tokens: (B, F*h*w, ct) -> (B, F * h/k * w/k, k*k*ct), each coarse token's k x k fine tokens
  // inside its token frame (an image: F = 1)
  at::Tensor m = v.reshape({b, gf, h, k, w, k, ct}).permute({0, 1, 2, 4, 3, 5, 6})
                     .reshape({b, int64_t(gf) * h * w, int64_t(k) * k * ct});
  // a token's channels: FLUX's c * sub + s, or Wan's s * C + c ((t, h, w, c))
  m = channels_first ? m.reshape({b, -1, int64_t(k) * k, c, sub}) : m.reshape({b, -1, int64_t(k) * k, int64_t(sub), c});
  m = m.mean(channels_first ? std::vector<int64_t>{2, 4} : std::vector<int64_t>{2, 3}, /*keepdim=*/true)
          .expand(m.sizes());
  // patching.unmerge_tokens
  return m.reshape({b, int64_t(gf) * h * w, int64_t(k) * k * ct})
      .reshape({b, gf, h, w, k, k, ct})
      .permute({0, 1, 2, 4, 3, 5, 6})
      .reshape({b, int64_t(gf) * gh * gw, ct});
}

at::Tensor carry_detail(const at::Tensor& v, const at::Tensor& last_fine, int gh, int gw, int k, int sub, int gf,
                        bool channels_first) {
  const at::Tensor d = block_mean(v.to(at::kFloat) - last_fine.to(at::kFloat), gh, gw, k, sub, gf, channels_first);
  return (last_fine.to(at::kFloat) + d).to(v.scalar_type());
}

at::Tensor DetailCarry::apply(int k, const at::Tensor& v) {
  if (k == 1) {
    last_fine_ = v.detach().clone();  // the backend may reuse its output buffer
    return v;
  }
  return last_fine_.defined() ? carry_detail(v, last_fine_, gh_, gw_, k, sub_, gf_, !video_) : v;
}

}  // namespace ddit
