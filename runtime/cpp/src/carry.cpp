#include "carry.h"

#include "error.h"

namespace ddit {

at::Tensor block_mean(const at::Tensor& v, int gh, int gw, int k, int sub) {
  if (v.dim() != 3 || v.size(1) != int64_t(gh) * gw || sub < 1 || v.size(2) % sub != 0 || k < 1 || gh % k != 0 ||
      gw % k != 0)
    throw argument_error("detail carry: the velocity or the block size does not fit the token grid");
  const int64_t b = v.size(0), ct = v.size(2), c = ct / sub;
  const int64_t h = gh / k, w = gw / k;
  // patching.merge_tokens: (B, h*w, ct) -> (B, h/k * w/k, k*k*ct), each coarse token's k x k fine tokens
  at::Tensor m = v.reshape({b, h, k, w, k, ct}).permute({0, 1, 3, 2, 4, 5}).reshape({b, h * w, int64_t(k) * k * ct});
  m = m.reshape({b, -1, int64_t(k) * k, c, sub});
  m = m.mean({2, 4}, /*keepdim=*/true).expand(m.sizes());
  // patching.unmerge_tokens
  return m.reshape({b, h * w, int64_t(k) * k * ct})
      .reshape({b, h, w, k, k, ct})
      .permute({0, 1, 3, 2, 4, 5})
      .reshape({b, int64_t(gh) * gw, ct});
}

at::Tensor carry_detail(const at::Tensor& v, const at::Tensor& last_fine, int gh, int gw, int k, int sub) {
  const at::Tensor d = block_mean(v.to(at::kFloat) - last_fine.to(at::kFloat), gh, gw, k, sub);
  return (last_fine.to(at::kFloat) + d).to(v.scalar_type());
}

at::Tensor DetailCarry::apply(int k, const at::Tensor& v) {
  if (k == 1) {
    last_fine_ = v.detach().clone();  // the backend may reuse its output buffer
    return v;
  }
  return last_fine_.defined() ? carry_detail(v, last_fine_, gh_, gw_, k, sub_) : v;
}

}  // namespace ddit
