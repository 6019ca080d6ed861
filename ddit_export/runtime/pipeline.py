"""A drop-in for ``FluxPipeline.transformer``: assign it and the user's own pipeline call gets dynamic patching.

    pipe = FluxPipeline.from_pretrained(DIR, local_files_only=True)
    pipe.transformer = DDiTTransformer(MultiPatchFlux.from_trunk_and_adapters(pipe.transformer, ADAPTERS))
    image = pipe(prompt, num_inference_steps=50).images[0]
    print(pipe.transformer.trace.sizes)

The pipeline calls the transformer once per step (twice with true CFG, at the same timestep); the drop-in keeps the
last four latents it was given, decides the size with the same policy the runtime uses, and starts a new history
whenever the timestep goes up (a new generation).
"""
from __future__ import annotations

import contextlib
import json
from collections import deque
from pathlib import Path

import torch
from diffusers.models.modeling_utils import ModelMixin

from ..flops import step_flops
from ..schedule import DDiTPolicy, StepRecord, Trace
from ..settings import ScheduleSettings


SCHEDULE_FILE = "ddit_schedule.json"


class DDiTTransformer(ModelMixin):
    """A ``ModelMixin`` only so that ``pipe.save_pretrained`` finds a save method: it saves the trunk as the normal
    diffusers transformer, the adapters file and the schedule beside it, and ``FluxPipeline.from_pretrained`` loads
    the folder back wrapped (see :meth:`save_pretrained`)."""

    def __init__(self, model, schedule: ScheduleSettings = ScheduleSettings(), policy_factory=None):
        super().__init__()
        if schedule.policy != "ddit" and policy_factory is None:
            from ..errors import ConfigError

            raise ConfigError(f"the diffusers drop-in runs the DDiT rule (policy 'ddit'); policy {schedule.policy!r} "
                              f"needs the step count, which a pipeline call does not announce: pass "
                              f"policy_factory=lambda grid, sizes: ... (e.g. schedule.static.Ladder(steps, ...))")
        self.model = model
        self.schedule = schedule
        self._custom_policy = policy_factory is not None
        self.policy_factory = policy_factory or (lambda grid, sizes: DDiTPolicy(schedule, grid, sizes))
        self.trace: Trace | None = None
        self._reset()

    def _reset(self):
        self._history: deque = deque(maxlen=4)
        self._last_t: float | None = None
        self._size = 1
        self._policy = None

    # attributes FluxPipeline reads from its transformer
    @property
    def config(self):
        return self.model.trunk.config

    @property
    def dtype(self):
        return self.model.dtype

    @property
    def device(self):
        return self.model.device

    # ---- what diffusers' loaders reach through the pipeline's transformer --------------------------------------
    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            model = self.__dict__.get("_modules", {}).get("model")
            if model is None or name not in _delegated():
                raise
            # LoRA (``pipe.load_lora_weights`` -> ``load_lora_adapter``, ``set_adapters``, ``fuse_lora``, ...) and the
            # IP-Adapter's ``encoder_hid_proj`` live on the trunk, which every patch size runs: delegate to it
            return getattr(model.trunk, name)

    # ---- save_pretrained / from_pretrained ----------------------------------------------------------------------
    def save_pretrained(self, save_directory, **kwargs):
        """The trunk's own ``save_pretrained`` (config.json + weights, every keyword passed on), plus
        ``ddit_adapters.safetensors`` (the coarse sizes) and ``ddit_schedule.json`` (the schedule settings) beside it.
        A custom ``policy_factory`` cannot be written down: refused before anything of the transformer is written."""
        from ..errors import ConfigError

        if self._custom_policy:
            raise ConfigError("this DDiTTransformer has a custom policy_factory, which cannot be saved; save the trunk "
                              "(pipe.transformer.model.trunk.save_pretrained) and the adapters (model.save_adapters) "
                              "and wrap again after loading")
        trunk = self.model.trunk
        folder = Path(save_directory)
        trunk.save_pretrained(str(folder), **kwargs)
        self.model.save_adapters(folder)
        (folder / SCHEDULE_FILE).write_text(json.dumps({"format": "ddit-schedule/1",
                                                        "trunk_class": type(trunk).__name__,
                                                        "schedule": vars(self.schedule)}, indent=1))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """Load a folder written by :meth:`save_pretrained`: the trunk with diffusers (every keyword passed on), then
        the adapters and schedule beside it. ``FluxPipeline.from_pretrained`` calls this for a saved wrapped pipe."""
        import diffusers

        from ..errors import WeightsError
        from ..models.flux import MultiPatchFlux

        folder = Path(pretrained_model_name_or_path)
        if kwargs.get("subfolder"):
            folder = folder / kwargs.pop("subfolder")
        meta_file = folder / SCHEDULE_FILE
        if not meta_file.is_file():
            raise WeightsError(f"{folder} has no {SCHEDULE_FILE}: not a folder written by DDiTTransformer.save_pretrained")
        meta = json.loads(meta_file.read_text())
        if meta.get("format") != "ddit-schedule/1":
            raise WeightsError(f"{meta_file} is not a ddit schedule file (format {meta.get('format')!r})")
        trunk_cls = getattr(diffusers, meta["trunk_class"], None)
        if trunk_cls is None:
            raise WeightsError(f"{meta_file} names trunk class {meta['trunk_class']!r}, which diffusers does not have")
        trunk = trunk_cls.from_pretrained(str(folder), **kwargs)
        return cls(MultiPatchFlux.from_trunk_and_adapters(trunk, folder), ScheduleSettings(**meta["schedule"]))

    def cache_context(self, name: str, **kwargs):
        """The trunk's ``cache_context`` when diffusers' cache hooks sit on it (``pipe.transformer.enable_cache(...)``
        reaches the trunk), so its hooks see the pipeline's cond/uncond calls; else nothing."""
        trunk = self.model.trunk
        if hasattr(trunk, "_diffusers_hook") and hasattr(trunk, "cache_context"):
            return trunk.cache_context(name, **kwargs)
        return contextlib.nullcontext()

    def _reset_trunk_caches(self):
        """A size switch (or a new generation) starts diffusers' cache hooks afresh: their stored state is in the
        token form of the size that made it. Cache hooks this has not been tested with are refused."""
        hooks = _stateful_hooks(self.model.trunk)
        if not hooks:
            return
        untested = sorted(hooks - set(_CACHES_TESTED))
        if untested:
            from ..errors import ConfigError

            raise ConfigError(f"diffusers cache hook(s) {', '.join(untested)} on the trunk are not supported by the DDiT "
                              f"drop-in (tested: FirstBlockCache, PyramidAttentionBroadcast); disable_cache() or use "
                              f"the runtime's own step cache")
        from diffusers.hooks.hooks import StateManager, _set_cache_context

        trunk = self.model.trunk
        managers = [a for m in trunk.modules() if getattr(m, "_diffusers_hook", None) is not None
                    for h in m._diffusers_hook.hooks.values() if h._is_stateful
                    for a in vars(h).values() if isinstance(a, StateManager)]
        context = next((sm._context for sm in managers if sm._context is not None), None)
        trunk._reset_stateful_cache()  # also clears the pipeline's cache context: set it again
        if context is not None:
            _set_cache_context(trunk, context)

    @torch.compiler.disable
    def _decide(self, hidden_states, encoder_hidden_states, timestep, img_ids) -> tuple[int, tuple[int, int]]:
        """The size for this call, decided eagerly: under ``torch.compile`` the history, the trace and the policy stay
        outside the graph, so the compiled part sees only (size, grid) and compiles once per size, not per step."""
        grid = (int(img_ids[:, 1].max()) + 1, int(img_ids[:, 2].max()) + 1)
        t = float(timestep.flatten()[0])
        if self._last_t is None or t > self._last_t:  # a new generation starts
            self._reset()
            self._policy = self.policy_factory(grid, self.model.sizes)
            self.trace = Trace("pipeline", grid, {"schedule": vars(self.schedule)},
                               fine_flops_per_step=step_flops(self.config, grid[0] * grid[1],
                                                              encoder_hidden_states.shape[1], 1,
                                                              batch=hidden_states.shape[0]))
        if t != self._last_t:  # first call of this step (a true-CFG second call reuses the decision)
            self._history.append(hidden_states.detach().float().cpu().numpy())
            step = len(self.trace.steps)
            d = self._policy.decide(step, self._history)
            if step == 0 or d.size != self._size:
                self._reset_trunk_caches()
            self._size = d.size
            self.trace.steps.append(StepRecord(
                step, t, d.size, d.reason, grid[0] * grid[1] // d.size ** 2,
                float(step_flops(self.config, grid[0] * grid[1], encoder_hidden_states.shape[1], d.size,
                                 self.model.adapter_settings.rank, hidden_states.shape[0])), d.sigmas))
            self._last_t = t
        return self._size, grid

    def forward(self, hidden_states, encoder_hidden_states=None, pooled_projections=None, timestep=None,
                img_ids=None, txt_ids=None, guidance=None, joint_attention_kwargs=None, return_dict=True, **kwargs):
        _refuse_ip_adapter(joint_attention_kwargs)
        if img_ids.ndim == 3:
            img_ids = img_ids[0]
        if txt_ids.ndim == 3:
            txt_ids = txt_ids[0]
        size, grid = self._decide(hidden_states, encoder_hidden_states, timestep, img_ids)
        out = self.model(hidden_states, encoder_hidden_states, pooled_projections, timestep, img_ids, txt_ids,
                         guidance, size=size, grid=grid)
        return (out,) if not return_dict else _Output(out)


def _delegated() -> frozenset:
    """Attribute names the wrapper hands to the trunk: diffusers' LoRA (PEFT) and FLUX IP-Adapter loader API."""
    global _DELEGATED
    if _DELEGATED is None:
        from diffusers.loaders import PeftAdapterMixin
        from diffusers.loaders.transformer_flux import FluxTransformer2DLoadersMixin

        from diffusers.models.cache_utils import CacheMixin

        names = {"peft_config", "encoder_hid_proj", "_hf_peft_config_loaded", "_prepare_lora_hotswap_kwargs"}
        for cls in (PeftAdapterMixin, FluxTransformer2DLoadersMixin, CacheMixin):  # CacheMixin: enable_cache & co.
            names.update(n for n in vars(cls) if not n.startswith("__"))
        _DELEGATED = frozenset(names)
    return _DELEGATED


_DELEGATED = None
# diffusers' cache hooks tested through the drop-in (tests/runtime/test_pipeline.py): state reset at a size switch
_CACHES_TESTED = ("fbc_leader_block_hook", "fbc_block_hook", "pyramid_attention_broadcast")


def _stateful_hooks(trunk) -> set[str]:
    names = set()
    for m in trunk.modules():
        reg = getattr(m, "_diffusers_hook", None)
        if reg is not None:
            names.update(n for n, h in reg.hooks.items() if h._is_stateful)
    return names


def _refuse_ip_adapter(joint_attention_kwargs):
    if joint_attention_kwargs and "ip_adapter_image_embeds" in joint_attention_kwargs:
        from ..errors import ConfigError

        raise ConfigError("IP-Adapter image embeddings are not supported by the DDiT drop-in (the coarse sizes "
                          "have no IP-Adapter path); run the plain transformer (pipe.transformer = "
                          "pipe.transformer.model.unwrap()) for IP-Adapter generations")


class _Output(dict):
    def __init__(self, sample):
        super().__init__(sample=sample)
        self.sample = sample

    def __getitem__(self, k):
        return self.sample if k == 0 else super().__getitem__(k)
