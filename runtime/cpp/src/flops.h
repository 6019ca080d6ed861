// Analytic FLOPs of one transformer call (ddit_export/flops.py step_flops, the FLUX/image case, ported): matrix
// multiplications only, so a C++ trace's FLOPs equal a Python trace's for the same steps.
#pragma once
#include <cstdint>

namespace ddit {

struct FluxDims {  // flops.FluxDims, from the manifest's model.transformer_config
  int64_t width = 0, in_channels = 0, out_channels = 0, joint_dim = 0, pooled_dim = 0, double_blocks = 0,
          single_blocks = 0;
  bool guidance = false;
};

int64_t step_flops(const FluxDims& m, int64_t image_tokens, int64_t text_tokens, int64_t k, int64_t lora_rank,
                   int64_t batch);

}  // namespace ddit
