/* ddit: the DDiT runtime as a C library (runtime/cpp). Opens a ddit-export bundle built with
 * `ddit-export build --backend aoti`, holds the shared weights once in memory for every patch-size variant, and
 * denoises FLUX latents (images) or Wan latents (video, bundle format 2) from text embeddings or prompts with the
 * DDiT scheduler deciding the patch size of every step.
 *
 * Conventions: every function returns DDIT_OK (0) or an error code; the message of the last error of the calling
 * thread is ddit_last_error(). No C++ exception crosses this boundary. Handles are opaque; a handle is used by one
 * thread at a time.
 *
 * C API 3 (DDIT_API_VERSION 3): ddit_schedule gained `int carry` at its end (detail carry, ddit_export/runtime/
 * carry.py). Rebuild callers of API 2: on LP64 the field takes the struct's tail padding (sizeof unchanged), so an
 * old caller's unset padding would be read as `carry`; a value other than 0/1 is DDIT_ERR_ARGUMENT. A zeroed
 * struct (or ddit_schedule_defaults on a bundle without carry) is carry off, as before.
 *
 * C API 4 (DDIT_API_VERSION 4): video bundles (format 2: kind "wan-pixel", "wan"). ddit_schedule gained
 * `int video_std` and ddit_info `is_video`, `frames`, `grid_f` at their ends, so both structs grew: rebuild
 * callers of API 3 (the library writes the whole struct). A video bundle's latents are (batch, grid_f * grid_h *
 * grid_w, channels) Wan patches; it takes text states only (pooled NULL, pooled_len 0); its pixels are
 * (batch, frames, height, width, 3). Image bundles behave as in API 3.
 *
 * C API 5 (DDIT_API_VERSION 5): ddit_cache gained `int on_switch` at its end (the cache's switch refresh,
 * settings.CacheSettings.switch). On LP64 it takes the struct's tail padding (sizeof unchanged): rebuild callers of
 * API 4, whose unset padding would be read as `on_switch`; a value other than 0/1 is DDIT_ERR_ARGUMENT. A zeroed
 * struct, or ddit_cache_defaults on a bundle without it, is the switch refresh off, as before. */
#ifndef DDIT_DDIT_H
#define DDIT_DDIT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DDIT_API_VERSION 5
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
  int carry;              /* every policy: 0 off; 1 "fine" (detail carry): a computed coarse step after a fine one
                             takes the last fine velocity plus the coarse variant's per-block mean change (API 3) */
  int video_std;          /* ddit on a video grid: 0 "clip" (a k x k patch's std across all token frames), 1 "frame"
                             (each frame's patch alone); images ignore it (API 4) */
} ddit_schedule;

typedef struct {
  int height, width;           /* pixels */
  int grid_h, grid_w;          /* fine token grid (per token frame for video) */
  int tokens, channels;        /* fine tokens and channels of the latents (B, tokens, channels) */
  int text_len, joint_dim;     /* encoder_hidden_states: (B, text_len, joint_dim) */
  int pooled_dim;              /* pooled_projections: (B, pooled_dim); 0 for video (no pooled text) */
  int guidance_embeds;         /* 1: the model takes a guidance input */
  int default_steps;
  int latent_channels;         /* C of the (B, C, 2*grid_h, 2*grid_w) noise the seed draws (video: (B, C, F, H, W)) */
  int n_sizes;                 /* the sizes loaded (ddit_open_sizes) */
  int sizes[DDIT_MAX_SIZES];
  char device[16];
  int has_text_encoder;        /* 1: ddit_encode / request.prompts work (the bundle's word encoder is in the package) */
  int has_decoder;             /* 1: ddit_decode / ddit_generate return pixels (pixel models; a compiled VAE decoder) */
  int max_words;               /* the word tokenizer's max_length (0 without a text encoder) */
  int threads;                 /* intra-op threads the model runs use (ddit_open_options.threads) */
  int verified;                /* 1: every file this runtime reads matched the manifest's sha256 at open */
  int is_video;                /* 1: a video bundle (API 4) */
  int frames;                  /* pixel frames of a clip (1 for an image); pixels are batch * frames * H * W * 3 */
  int grid_f;                  /* token frames (1 for an image): tokens = grid_f * grid_h * grid_w */
} ddit_info;

/* The step cache (ddit_export/runtime/cache.py, ported): TaylorSeer on the model's output. mode "off", "taylor"
 * (warm-up computed steps, then one computed step every `interval`, the last `tail` computed; `order` 0/1/2 Newton
 * extrapolation in sigma; threshold > 0 adds the error indicator, 0 = none) or "plan" (plan[i] = 1 computed,
 * 0 cached; n_plan == steps). on_switch 1 (taylor only): also compute the first step whose patch size differs from
 * the last computed step's, and extrapolate from that size's velocities only. ddit_cache_defaults() fills it with
 * the bundle manifest's cache profile. */
typedef struct {
  char mode[8];
  int interval, order, warmup, tail;
  double threshold;
  const int* plan;
  int n_plan;
  int on_switch;  /* API 5 */
} ddit_cache;

/* How to open a bundle. ddit_open_options_init() fills the defaults: every size, threads 1, verify 1. */
typedef struct {
  const int* sizes; int n_sizes;  /* NULL / 0: every size of the package */
  int threads;                    /* intra-op (OpenMP and ATen) threads of the model runs, set by the library; >= 1 */
  int verify;                     /* 1: sha256 of every file the runtime reads, checked against the manifest;
                                     0: skipped, and every trace says "verified": false */
} ddit_open_options;

typedef struct {
  int batch;
  const float* states; size_t states_len;   /* batch * text_len * joint_dim */
  const float* pooled; size_t pooled_len;   /* batch * pooled_dim (video: NULL, 0) */
  int steps;                                /* 0: the bundle's default */
  float guidance;                           /* guidance-distilled models only */
  int64_t seed;                             /* initial noise as FluxPipeline draws it (torch CPU generator) */
  const float* init_latents; size_t init_len; /* or these initial latents (batch * tokens * channels), not NULL */
  const ddit_schedule* schedule;            /* NULL: the bundle's defaults */
  const ddit_cache* cache;                  /* NULL: the bundle's cache profile (off when it has none) */
  const char* const* prompts;               /* or `batch` prompts, encoded by the bundle's text encoder
                                               (states/pooled NULL then; needs info.has_text_encoder) */
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
  double seconds;        /* wall time of the step (model call or extrapolation), device synchronised */
  char kind[8];          /* "model": the transformer ran; "cached": the step cache extrapolated */
  double flops;          /* the step's transformer FLOPs as ddit_export/flops.py counts them (0 when cached) */
} ddit_step;

const char* ddit_last_error(void);
const char* ddit_version(void);

/* Open a bundle with every size of its AOTInductor package (sizes NULL / n 0) or only the given ones. */
int ddit_open(const char* bundle_dir, ddit_runtime** out);
int ddit_open_sizes(const char* bundle_dir, const int* sizes, int n_sizes, ddit_runtime** out);
void ddit_open_options_init(ddit_open_options* opts);
int ddit_open_ex(const char* bundle_dir, const ddit_open_options* opts, ddit_runtime** out);
int ddit_cache_defaults(const ddit_runtime* rt, ddit_cache* out);
void ddit_close(ddit_runtime* rt);
int ddit_get_info(const ddit_runtime* rt, ddit_info* out);
int ddit_schedule_defaults(const ddit_runtime* rt, ddit_schedule* out);

/* Denoise; writes the final latents (batch * tokens * channels floats) into out_latents. */
int ddit_denoise(ddit_runtime* rt, const ddit_request* req, float* out_latents, size_t out_len);
/* Prompts -> text embeddings with the bundle's word encoder (states: n * text_len * joint_dim floats, pooled:
 * n * pooled_dim). Unknown words, characters other than letters/spaces/punctuation, empty or too long prompts are
 * DDIT_ERR_ARGUMENT naming the word, as the Python tokenizer does. */
int ddit_encode(ddit_runtime* rt, const char* const* prompts, int n, float* states, size_t states_len,
                float* pooled, size_t pooled_len);
/* Final latents (batch * tokens * channels) -> RGB pixels, uint8 (batch, height, width, 3), exactly as the Python
 * runtime decodes them (images.pixels_to_pil for pixel models; the compiled VAE decoder for FLUX bundles). A
 * wan-pixel bundle: (batch, frames, height, width, 3) as models/wan.py video_pixels_to_frames makes them; a "wan"
 * bundle (VAE latents) has no decoder here (DDIT_ERR_UNSUPPORTED). */
int ddit_decode(ddit_runtime* rt, const float* latents, size_t latents_len, int batch, uint8_t* pixels,
                size_t pixels_len);
/* ddit_denoise then ddit_decode: prompts (or embeddings) in, pixels out. */
int ddit_generate(ddit_runtime* rt, const ddit_request* req, uint8_t* pixels, size_t pixels_len);
/* The trace of the last ddit_denoise / ddit_generate. */
int ddit_trace_length(const ddit_runtime* rt, int* n);
int ddit_trace_step(const ddit_runtime* rt, int i, ddit_step* out);
/* The trace as JSON in Python's format ("format": "ddit-trace/1", schedule/trace.py), which `ddit-export schedule`
 * reads; *needed is the byte count with the final NUL (call with cap 0 to ask). */
int ddit_trace_json(const ddit_runtime* rt, char* buf, size_t cap, size_t* needed);

/* One model call of variant `size` (the per-step dispatch, for benchmarks): latents (batch * tokens * channels),
 * timestep = sigma in [0, 1] (a Wan model gets it as diffusers' timestep, sigma * 1000); pooled NULL for video;
 * writes the velocity into out (same length as latents). */
int ddit_run_variant(ddit_runtime* rt, int size, int batch, const float* latents, const float* states,
                     const float* pooled, float timestep, float guidance, float* out);

/* The scheduler alone (pure C++; checked against the Python scheduler on recorded latents). */
int ddit_scheduler_create(const ddit_schedule* schedule, int grid_h, int grid_w, const int* sizes, int n_sizes,
                          int steps, ddit_scheduler** out);
/* The same on a video grid of grid_f token frames (schedule->video_std picks the std's span; API 4). */
int ddit_scheduler_create_video(const ddit_schedule* schedule, int grid_f, int grid_h, int grid_w, const int* sizes,
                                int n_sizes, int steps, ddit_scheduler** out);
/* Decide step `step` given the current latents (batch * grid_f * grid_h * grid_w * channels floats). */
int ddit_scheduler_decide(ddit_scheduler* s, int step, const float* latents, int batch, int channels,
                          ddit_step* out);
void ddit_scheduler_free(ddit_scheduler* s);

#ifdef __cplusplus
}
#endif
#endif /* DDIT_DDIT_H */
