/* ddit: the DDiT runtime as a C library (runtime/cpp). Opens a ddit-export bundle built with
 * `ddit-export build --backend aoti`, holds the shared weights once in memory for every patch-size variant, and
 * denoises FLUX latents from text embeddings with the DDiT scheduler deciding the patch size of every step.
 *
 * Conventions: every function returns DDIT_OK (0) or an error code; the message of the last error of the calling
 * thread is ddit_last_error(). No C++ exception crosses this boundary. Handles are opaque; a handle is used by one
 * thread at a time. */
#ifndef DDIT_DDIT_H
#define DDIT_DDIT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DDIT_API_VERSION 1
#define DDIT_MAX_SIZES 8

typedef enum {
  DDIT_OK = 0,
  DDIT_ERR_ARGUMENT = 1,    /* a bad argument: a null pointer, a wrong length or shape, an unknown policy */
  DDIT_ERR_BUNDLE = 2,      /* the bundle is missing, damaged, of a newer format, or lacks what was asked */
  DDIT_ERR_UNSUPPORTED = 3, /* valid but not implemented here (the probe policy, a scheduler config) */
  DDIT_ERR_RUNTIME = 4      /* the model run failed (out of memory, a kernel error) */
} ddit_status;

typedef struct ddit_runtime ddit_runtime;
typedef struct ddit_scheduler ddit_scheduler;

/* The schedule policy of a generation. ddit_schedule_defaults() fills it with the bundle's calibrated profile. */
typedef struct {
  char policy[16];        /* "ddit", "ladder", "coarse-first", "static"; "probe" is refused (not ported) */
  double tau, eps;        /* ddit: threshold and percentile in (0, 1) */
  int warmup;             /* ddit: fine steps before the rule decides (>= 3) */
  int window_same_size;   /* ddit: 1 = decide only after three steps of one size ("same-size"), else "any" */
  int head, n4, tail;     /* ladder: head fine steps, n4 at size 4, size 2, tail fine steps */
  int coarse_steps;       /* coarse-first: this many steps at coarse_size, then fine */
  int coarse_size;
  const int* static_sizes; /* static: one size per step (n_static == steps) */
  int n_static;
} ddit_schedule;

typedef struct {
  int height, width;           /* pixels */
  int grid_h, grid_w;          /* fine token grid */
  int tokens, channels;        /* fine tokens and channels of the latents (B, tokens, channels) */
  int text_len, joint_dim;     /* encoder_hidden_states: (B, text_len, joint_dim) */
  int pooled_dim;              /* pooled_projections: (B, pooled_dim) */
  int guidance_embeds;         /* 1: the model takes a guidance input */
  int default_steps;
  int latent_channels;         /* C of the (B, C, 2*grid_h, 2*grid_w) noise the seed draws */
  int n_sizes;                 /* the sizes loaded (ddit_open_sizes) */
  int sizes[DDIT_MAX_SIZES];
  char device[16];
} ddit_info;

typedef struct {
  int batch;
  const float* states; size_t states_len;   /* batch * text_len * joint_dim */
  const float* pooled; size_t pooled_len;   /* batch * pooled_dim */
  int steps;                                /* 0: the bundle's default */
  float guidance;                           /* guidance-distilled models only */
  int64_t seed;                             /* initial noise as FluxPipeline draws it (torch CPU generator) */
  const float* init_latents; size_t init_len; /* or these initial latents (batch * tokens * channels), not NULL */
  const ddit_schedule* schedule;            /* NULL: the bundle's defaults */
} ddit_request;

typedef struct {
  int step;
  double sigma;          /* t / 1000 of this step */
  int size;
  char reason[8];        /* "warmup", "rule", "hold", "static" */
  int tokens;
  int n_sigmas;          /* rule steps: sigma_k of each candidate size k > 1 */
  int sigma_sizes[DDIT_MAX_SIZES];
  double sigma_values[DDIT_MAX_SIZES];
  double seconds;        /* wall time of the model call */
} ddit_step;

const char* ddit_last_error(void);
const char* ddit_version(void);

/* Open a bundle with every size of its AOTInductor package (sizes NULL / n 0) or only the given ones. */
int ddit_open(const char* bundle_dir, ddit_runtime** out);
int ddit_open_sizes(const char* bundle_dir, const int* sizes, int n_sizes, ddit_runtime** out);
void ddit_close(ddit_runtime* rt);
int ddit_get_info(const ddit_runtime* rt, ddit_info* out);
int ddit_schedule_defaults(const ddit_runtime* rt, ddit_schedule* out);

/* Denoise; writes the final latents (batch * tokens * channels floats) into out_latents. */
int ddit_denoise(ddit_runtime* rt, const ddit_request* req, float* out_latents, size_t out_len);
/* The trace of the last ddit_denoise. */
int ddit_trace_length(const ddit_runtime* rt, int* n);
int ddit_trace_step(const ddit_runtime* rt, int i, ddit_step* out);
/* The trace as JSON; *needed is the byte count with the final NUL (call with cap 0 to ask). */
int ddit_trace_json(const ddit_runtime* rt, char* buf, size_t cap, size_t* needed);

/* One model call of variant `size` (the per-step dispatch, for benchmarks): latents (batch * tokens * channels),
 * timestep in [0, 1]; writes the velocity into out (same length as latents). */
int ddit_run_variant(ddit_runtime* rt, int size, int batch, const float* latents, const float* states,
                     const float* pooled, float timestep, float guidance, float* out);

/* The scheduler alone (pure C++; checked against the Python scheduler on recorded latents). */
int ddit_scheduler_create(const ddit_schedule* schedule, int grid_h, int grid_w, const int* sizes, int n_sizes,
                          int steps, ddit_scheduler** out);
/* Decide step `step` given the current latents (batch * grid_h * grid_w * channels floats). */
int ddit_scheduler_decide(ddit_scheduler* s, int step, const float* latents, int batch, int channels,
                          ddit_step* out);
void ddit_scheduler_free(ddit_scheduler* s);

#ifdef __cplusplus
}
#endif
#endif /* DDIT_DDIT_H */
