// The runtime handle behind the C API and the helpers every extern "C" function uses (runtime.cpp holds the
// generation loop; other API files — text encoding, decoding — add their functions over the same handle).
#pragma once
#include <ATen/ATen.h>

#include <memory>
#include <string>
#include <vector>

#include "backend.h"
#include "error.h"

struct ddit_runtime {
  ddit::Bundle bundle;
  std::unique_ptr<ddit::Backend> backend;
  std::vector<ddit_step> trace;
  at::Tensor img_ids, txt_ids;
  int threads = 1;        // intra-op threads of this handle's model runs (set before every run: ATen's is global)
  bool verified = false;  // the runtime files matched the manifest's sha256 at open
  std::string trace_settings;  // the last generation's settings, JSON (the trace's "settings")
  int64_t fine_flops = 0;      // FLOPs of one fine step of the last generation (the trace's fine_flops_per_step)
};

namespace ddit {

// The message of the last error of the calling thread (ddit_last_error).
std::string& last_error();

// Run f; turn every exception into a ddit_status and the thread's last error. No exception leaves.
template <class F>
int guarded(F&& f) {
  try {
    f();
    last_error().clear();
    return DDIT_OK;
  } catch (const Error& e) {
    last_error() = e.what();
    return e.code;
  } catch (const c10::Error& e) {
    last_error() = std::string("torch: ") + e.what_without_backtrace();
    return DDIT_ERR_RUNTIME;
  } catch (const std::bad_alloc&) {
    last_error() = "out of memory";
    return DDIT_ERR_RUNTIME;
  } catch (const std::exception& e) {
    last_error() = e.what();
    return DDIT_ERR_RUNTIME;
  } catch (...) {
    last_error() = "unknown error";
    return DDIT_ERR_RUNTIME;
  }
}

inline void need(const void* p, const char* what) {
  if (!p) throw argument_error(std::string(what) + " is NULL");
}

// Before every model run of a handle: its intra-op thread count. at::set_num_threads is process-wide for ATen and
// sets OpenMP's count of the calling thread, which the AOTInductor kernels read (compiled with dynamic threads).
void use_threads(const ddit_runtime* rt);

}  // namespace ddit
