// Analytic FLOPs of one transformer call (ddit_export/flops.py step_flops, FLUX and Wan, ported): matrix
// multiplications only, so a C++ trace's FLOPs equal a Python trace's for the same steps.
#pragma once
#include <cstdint>

namespace ddit {

struct FluxDims {  // flops.FluxDims, from the manifest's model.transformer_config
  int64_t width = 0, in_channels = 0, out_channels = 0, joint_dim = 0, pooled_dim = 0, double_blocks = 0,
          single_blocks = 0;
  bool guidance = false;
};

struct WanDims {  // the WanTransformer3DModel config fields flops.wan_step_flops reads
  int64_t width = 0, ffn_dim = 0, freq_dim = 0, text_dim = 0, in_channels = 0, out_channels = 0, patch = 1,
          layers = 0;
};

int64_t wan_step_flops(const WanDims& m, int64_t tokens, int64_t text_tokens, int64_t k, int64_t lora_rank,
                       int64_t batch);

int64_t step_flops(const FluxDims& m, int64_t image_tokens, int64_t text_tokens, int64_t k, int64_t lora_rank,
                   int64_t batch);

}  // namespace ddit
