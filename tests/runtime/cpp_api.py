"""ctypes mirror of runtime/cpp/include/ddit/ddit.h, for the tests: the same C API a C++ service links."""
from __future__ import annotations

import ctypes as C

import numpy as np

MAX_SIZES = 8


class Schedule(C.Structure):
    _fields_ = [("policy", C.c_char * 16), ("tau", C.c_double), ("eps", C.c_double), ("warmup", C.c_int),
                ("window_same_size", C.c_int), ("head", C.c_int), ("n4", C.c_int), ("tail", C.c_int),
                ("coarse_steps", C.c_int), ("coarse_size", C.c_int), ("static_sizes", C.POINTER(C.c_int)),
                ("n_static", C.c_int), ("carry", C.c_int),  # carry: C API 3, at the end as in ddit.h
                ("video_std", C.c_int)]  # C API 4


class Info(C.Structure):
    _fields_ = [(n, C.c_int) for n in ("height", "width", "grid_h", "grid_w", "tokens", "channels", "text_len",
                                       "joint_dim", "pooled_dim", "guidance_embeds", "default_steps",
                                       "latent_channels", "n_sizes")] + [
        ("sizes", C.c_int * MAX_SIZES), ("device", C.c_char * 16)] + [
        (n, C.c_int) for n in ("has_text_encoder", "has_decoder", "max_words", "threads", "verified",
                               "is_video", "frames", "grid_f")]  # the last three: C API 4


class Cache(C.Structure):
    _fields_ = [("mode", C.c_char * 8), ("interval", C.c_int), ("order", C.c_int), ("warmup", C.c_int),
                ("tail", C.c_int), ("threshold", C.c_double), ("plan", C.POINTER(C.c_int)), ("n_plan", C.c_int),
                ("on_switch", C.c_int)]  # C API 5


class OpenOptions(C.Structure):
    _fields_ = [("sizes", C.POINTER(C.c_int)), ("n_sizes", C.c_int), ("threads", C.c_int), ("verify", C.c_int)]


class Request(C.Structure):
    _fields_ = [("batch", C.c_int), ("states", C.POINTER(C.c_float)), ("states_len", C.c_size_t),
                ("pooled", C.POINTER(C.c_float)), ("pooled_len", C.c_size_t), ("steps", C.c_int),
                ("guidance", C.c_float), ("seed", C.c_int64), ("init_latents", C.POINTER(C.c_float)),
                ("init_len", C.c_size_t), ("schedule", C.POINTER(Schedule)), ("cache", C.POINTER(Cache)),
                ("prompts", C.POINTER(C.c_char_p))]


class Step(C.Structure):
    _fields_ = [("step", C.c_int), ("sigma", C.c_double), ("size", C.c_int), ("reason", C.c_char * 8),
                ("tokens", C.c_int), ("n_sigmas", C.c_int), ("sigma_sizes", C.c_int * MAX_SIZES),
                ("sigma_values", C.c_double * MAX_SIZES), ("seconds", C.c_double), ("kind", C.c_char * 8),
                ("flops", C.c_double)]

    def sigmas(self) -> dict:
        return {self.sigma_sizes[j]: self.sigma_values[j] for j in range(self.n_sigmas)}


class DDiTError(RuntimeError):
    def __init__(self, code: int, message: str):
        super().__init__(f"[{code}] {message}")
        self.code, self.message = code, message


def fptr(a: np.ndarray):
    return a.ctypes.data_as(C.POINTER(C.c_float))


class Lib:
    """The library loaded with ctypes; methods raise DDiTError(code, message) where the C call fails."""

    def __init__(self, path):
        self.lib = C.CDLL(str(path))
        self.lib.ddit_last_error.restype = C.c_char_p
        self.lib.ddit_close.restype = None
        self.lib.ddit_scheduler_free.restype = None

    def call(self, name, *args):
        rc = getattr(self.lib, name)(*args)
        if rc != 0:
            raise DDiTError(rc, self.lib.ddit_last_error().decode())
        return rc

    def open(self, folder, sizes=None):
        rt = C.c_void_p()
        arr = (C.c_int * len(sizes))(*sizes) if sizes else None
        self.call("ddit_open_sizes", str(folder).encode(), arr, len(sizes or ()), C.byref(rt))
        return rt

    def open_ex(self, folder, *, threads=1, verify=True, sizes=None):
        opts = OpenOptions()
        self.lib.ddit_open_options_init(C.byref(opts))
        arr = (C.c_int * len(sizes))(*sizes) if sizes else None
        opts.sizes, opts.n_sizes = (C.cast(arr, C.POINTER(C.c_int)) if arr else None), len(sizes or ())
        opts.threads, opts.verify = threads, int(verify)
        rt = C.c_void_p()
        self.call("ddit_open_ex", str(folder).encode(), C.byref(opts), C.byref(rt))
        return rt

    def cache_defaults(self, rt) -> Cache:
        out = Cache()
        self.call("ddit_cache_defaults", rt, C.byref(out))
        return out

    def trace_json(self, rt) -> str:
        need = C.c_size_t()
        self.call("ddit_trace_json", rt, None, C.c_size_t(0), C.byref(need))
        buf = C.create_string_buffer(need.value)
        self.call("ddit_trace_json", rt, buf, C.c_size_t(need.value), C.byref(need))
        return buf.value.decode()

    def info(self, rt) -> Info:
        out = Info()
        self.call("ddit_get_info", rt, C.byref(out))
        return out

    def defaults(self, rt) -> Schedule:
        out = Schedule()
        self.call("ddit_schedule_defaults", rt, C.byref(out))
        return out

    def denoise(self, rt, states, pooled, *, steps, seed=0, latents=None, schedule=None, guidance=3.5, cache=None,
                batch=None):
        info = self.info(rt)
        states = np.ascontiguousarray(states, np.float32)
        b = (states if pooled is None else pooled).shape[0] if batch is None else batch
        q = Request(batch=b, states=fptr(states), states_len=states.size, steps=steps, guidance=guidance, seed=seed)
        if pooled is not None:  # None: a video bundle's request (no pooled text)
            pooled = np.ascontiguousarray(pooled, np.float32)
            q.pooled, q.pooled_len = fptr(pooled), pooled.size
        if latents is not None:
            latents = np.ascontiguousarray(latents, np.float32)
            q.init_latents, q.init_len = fptr(latents), latents.size
        if schedule is not None:
            q.schedule = C.pointer(schedule)
        if cache is not None:
            q.cache = C.pointer(cache)
        out = np.zeros((max(b, 1), info.tokens, info.channels), np.float32)
        self.call("ddit_denoise", rt, C.byref(q), fptr(out), C.c_size_t(out.size))
        return out

    def trace(self, rt) -> list[Step]:
        n = C.c_int()
        self.call("ddit_trace_length", rt, C.byref(n))
        steps = [Step() for _ in range(n.value)]
        for i, s in enumerate(steps):
            self.call("ddit_trace_step", rt, i, C.byref(s))
        return steps

    def close(self, rt):
        self.lib.ddit_close(rt)


def cache(mode="taylor", *, interval=4, order=1, warmup=3, tail=1, threshold=None, plan=None,
          switch=False) -> Cache:
    """A ddit_cache; threshold None is 0 (none), as the C API has it."""
    c = Cache(mode=mode.encode(), interval=interval, order=order, warmup=warmup, tail=tail,
              threshold=threshold or 0.0, on_switch=int(switch))
    if plan is not None:
        c._plan = (C.c_int * len(plan))(*plan)  # kept alive with the struct
        c.plan, c.n_plan = C.cast(c._plan, C.POINTER(C.c_int)), len(plan)
    return c


def schedule(policy: str, *, tau=0.001, eps=0.4, warmup=3, same_size=False, head=0, n4=0, tail=4,
             coarse=(0, 2), static=None, carry="off", video_std="clip") -> Schedule:
    """A ddit_schedule; ``carry`` "off"/"fine" is 0/1, ``video_std`` "clip"/"frame" 0/1 (an int is passed as it
    is, for the bad-value checks)."""
    s = Schedule(policy=policy.encode(), tau=tau, eps=eps, warmup=warmup, window_same_size=int(same_size),
                 head=head, n4=n4, tail=tail, coarse_steps=coarse[0], coarse_size=coarse[1],
                 carry=carry if isinstance(carry, int) else {"off": 0, "fine": 1}[carry],
                 video_std=video_std if isinstance(video_std, int) else {"clip": 0, "frame": 1}[video_std])
    if static is not None:
        s._static = (C.c_int * len(static))(*static)  # kept alive with the struct
        s.static_sizes, s.n_static = C.cast(s._static, C.POINTER(C.c_int)), len(static)
    return s
