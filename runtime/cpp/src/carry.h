// Detail carry (ddit_export/runtime/carry.py, ported): with carry "fine" a computed coarse step (size k > 1) after
// a fine one takes the last fine step's velocity plus the coarse variant's per-block mean change,
//     v = v_fine_last + blockmean_k(v_k - v_fine_last),
// in float32; blockmean_k is the per-channel mean over each coarse token's block (its k x k fine tokens and the
// latent pixels packed in each: FLUX's channel layout c * sub + s, Wan's s * C + c), broadcast back. A video grid
// has gf token frames; blocks never span frames.
#pragma once
#include <ATen/ATen.h>

namespace ddit {

// Per-channel mean of v (B, gh*gw, C*sub fine tokens, channel index c * sub + s) over each k x k block of tokens
// and the sub pixels inside each token, broadcast back to (B, gh*gw, C*sub). The same tensor ops as carry.py's
// block_mean (merge_tokens, mean over the block's tokens and sub-pixels, unmerge_tokens), so the float32 results
// match it bit for bit.
at::Tensor block_mean(const at::Tensor& v, int gh, int gw, int k, int sub, int gf = 1, bool channels_first = true);

// last_fine + block_mean(v - last_fine) in float32, returned in v's dtype (carry.py carry_detail).
at::Tensor carry_detail(const at::Tensor& v, const at::Tensor& last_fine, int gh, int gw, int k, int sub, int gf = 1,
                        bool channels_first = true);

// One generation's carry state (carry.py DetailCarry): apply() keeps each computed fine step's velocity and gives a
// computed coarse step the last one's detail; before the first fine step a coarse step is returned as it is. The
// step cache's extrapolated steps are not passed through it.
class DetailCarry {
 public:
  DetailCarry(int gh, int gw, int sub, int gf = 1, bool video = false)
      : gh_(gh), gw_(gw), sub_(sub), gf_(gf), video_(video) {}
  at::Tensor apply(int k, const at::Tensor& v);

 private:
  int gh_, gw_, sub_, gf_;
  bool video_;
  at::Tensor last_fine_;  // undefined until the first fine step
};

}  // namespace ddit
