"""A drop-in for ``FluxPipeline.transformer``: assign it and the user's own pipeline call gets dynamic patching.

    pipe = FluxPipeline.from_pretrained(DIR, local_files_only=True)
    pipe.transformer = DDiTTransformer(MultiPatchFlux.from_trunk_and_adapters(pipe.transformer, ADAPTERS))
    image = pipe(prompt, num_inference_steps=50).images[0]
    print(pipe.transformer.trace.sizes)

The pipeline calls the transformer once per step (twice with true CFG, at the same timestep); the drop-in keeps the
last four latents it was given, decides the size with the same policy the runtime uses, and starts a new history
for each new generation: after an explicit :meth:`DDiTTransformer.reset`, or, given the pipeline's scheduler
(``DDiTTransformer(model, schedule, scheduler=pipe.scheduler)``), at the first call of a generation (the scheduler's
``step_index`` is ``None`` until the pipeline's first ``scheduler.step``; ``set_timesteps`` clears it). Without a
scheduler it falls back to "the timestep went up", which merges a split-sigmas call into the previous history.

The rule reads only the latents being denoised: the first ``N_fine`` image tokens (those sharing the first image id,
so FluxKontextPipeline's appended reference tokens are left out) and the first ``out_channels`` channels (so Fill and
Control's conditioning channels are left out). Steps that receive ControlNet residuals run at size 1 (the residuals
are per fine token); ``joint_attention_kwargs`` (incl. the LoRA ``scale``) reach every size; any other keyword
FluxTransformer2DModel.forward does not take is refused with a ConfigError naming it, and so are IP-Adapter
embeddings. ``pipe.save_pretrained`` saves the trunk as a normal transformer with the adapters and the schedule beside
it; diffusers' cache hooks on the trunk are reset at every size switch (FirstBlockCache, PyramidAttentionBroadcast;
others are refused).
"""
from __future__ import annotations

import contextlib
import json
import logging
from collections import deque
from pathlib import Path

import torch
from diffusers.models.modeling_utils import ModelMixin

from ..flops import step_flops
from ..schedule import DDiTPolicy, StepRecord, Trace
from ..settings import ScheduleSettings

log = logging.getLogger("ddit_export")
SCHEDULE_FILE = "ddit_schedule.json"  # models/registry.py reads it too (DROP_IN_SCHEDULE_FILE)


class DDiTTransformer(ModelMixin):
    """A ``ModelMixin`` only so that ``pipe.save_pretrained`` finds a save method: it saves the trunk as the normal
    diffusers transformer, the adapters file and the schedule beside it, and ``FluxPipeline.from_pretrained`` loads
    the folder back wrapped (see :meth:`save_pretrained`)."""

    def __init__(self, model, schedule: ScheduleSettings = ScheduleSettings(), policy_factory=None, scheduler=None):
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
        self.scheduler = scheduler
        # set by from_pretrained when the saved wrapper had a scheduler: the scheduler of the pipeline that calls it
        # is bound at its first call (a pipeline loads its scheduler as its own component, not through this class)
        self._follow_pipeline_scheduler = False
        self.trace: Trace | None = None
        self._reset()

    def reset(self):
        """Make the next call start a new generation (fresh history, policy and trace)."""
        self._reset()

    def _reset(self):
        self._history: deque = deque(maxlen=4)
        self._last_t: float | None = None
        self._size = 1
        self._policy = None
        self._seen_step_index = False  # the scheduler's step_index was set since this generation started

    def _new_generation(self, t: float) -> bool:
        if self.scheduler is None and self._follow_pipeline_scheduler:
            self.scheduler = _calling_pipeline_scheduler(self)
        if self._policy is None:
            return True
        if self.scheduler is None:
            return t > self._last_t
        if getattr(self.scheduler, "step_index", None) is None:
            return self._seen_step_index  # the first step of a generation, and not the one already begun
        self._seen_step_index = True
        return False

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
        ``ddit_adapters.safetensors`` (the coarse sizes) and ``ddit_schedule.json`` (the schedule settings, and whether
        the wrapper follows its pipeline's scheduler, which the pipeline saves itself) beside it. A custom ``policy_factory`` cannot be written down: refused before anything of the transformer is written."""
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
                                                        "schedule": vars(self.schedule),
                                                        "pipeline_scheduler": self.scheduler is not None},
                                                       indent=1))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """Load a folder written by :meth:`save_pretrained`: the trunk with diffusers (every keyword passed on), then
        the adapters and schedule beside it. ``FluxPipeline.from_pretrained`` (``WanPipeline.from_pretrained``) calls
        this for a saved wrapped pipe. A wrapper saved with a scheduler takes the scheduler of the pipeline that first
        calls it (``pipe.transformer.scheduler is pipe.scheduler`` after the first generation)."""
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
        if meta["trunk_class"].startswith("Wan"):  # WanPipeline.from_pretrained of a saved Wan drop-in
            from ..models.wan import MultiPatchWan
            from .pipeline_wan import DDiTWanTransformer

            wrapper = cls if issubclass(cls, DDiTWanTransformer) else DDiTWanTransformer
            out = wrapper(MultiPatchWan.from_trunk_and_adapters(trunk, folder), ScheduleSettings(**meta["schedule"]))
        else:
            out = cls(MultiPatchFlux.from_trunk_and_adapters(trunk, folder), ScheduleSettings(**meta["schedule"]))
        out._follow_pipeline_scheduler = bool(meta.get("pipeline_scheduler", False))
        return out

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
    def _decide(self, hidden_states, encoder_hidden_states, timestep, img_ids,
                controlnet: bool) -> tuple[int, tuple[int, int]]:
        """The size for this call, decided eagerly: under ``torch.compile`` the history, the trace and the policy stay
        outside the graph, so the compiled part sees only (size, grid) and compiles once per size, not per step."""
        n_fine, grid = _latent_grid(img_ids)
        t = float(timestep.flatten()[0])
        if self._new_generation(t):
            self._reset()
            self._policy = self.policy_factory(grid, self.model.sizes)
            self._warn_sizes(grid)
            self.trace = Trace("pipeline", grid, {"schedule": vars(self.schedule)},
                               fine_flops_per_step=step_flops(self.config, grid[0] * grid[1],
                                                              encoder_hidden_states.shape[1], 1,
                                                              batch=hidden_states.shape[0]))
        if t != self._last_t:  # first call of this step (a true-CFG second call reuses the decision)
            channels = self.model.trunk.proj_out.out_features  # the latent's channels (Fill/Control append more)
            self._history.append(hidden_states[:, :n_fine, :channels].detach().float().cpu().numpy())
            step = len(self.trace.steps)
            d = self._policy.decide(step, self._history)
            size, reason = d.size, d.reason
            if controlnet and size != 1:  # ControlNet residuals are per fine token: such steps run fine
                size, reason = 1, "controlnet"
            if step == 0 or size != self._size:
                self._reset_trunk_caches()
            self._size = size
            self.trace.steps.append(StepRecord(
                step, t, size, reason, grid[0] * grid[1] // size ** 2,
                float(step_flops(self.config, grid[0] * grid[1], encoder_hidden_states.shape[1], size,
                                 self.model.adapter_settings.rank, hidden_states.shape[0])), d.sigmas))
            self._last_t = t
        return (1 if controlnet else self._size), grid

    def forward(self, hidden_states, encoder_hidden_states=None, pooled_projections=None, timestep=None,
                img_ids=None, txt_ids=None, guidance=None, joint_attention_kwargs=None, controlnet_block_samples=None,
                controlnet_single_block_samples=None, return_dict=True, controlnet_blocks_repeat=False, **kwargs):
        if kwargs:
            from ..errors import ConfigError

            raise ConfigError(f"the DDiT drop-in does not support the keyword(s) {sorted(kwargs)} "
                              f"(FluxTransformer2DModel.forward does not take them either)")
        _refuse_ip_adapter(joint_attention_kwargs)
        if img_ids.ndim == 3:
            img_ids = img_ids[0]
        if txt_ids.ndim == 3:
            txt_ids = txt_ids[0]
        controlnet = controlnet_block_samples is not None or controlnet_single_block_samples is not None
        size, grid = self._decide(hidden_states, encoder_hidden_states, timestep, img_ids, controlnet)
        out = self.model(hidden_states, encoder_hidden_states, pooled_projections, timestep, img_ids, txt_ids,
                         guidance, size=size, grid=grid, joint_attention_kwargs=joint_attention_kwargs,
                         controlnet_block_samples=controlnet_block_samples,
                         controlnet_single_block_samples=controlnet_single_block_samples,
                         controlnet_blocks_repeat=controlnet_blocks_repeat)
        return (out,) if not return_dict else _Output(out)

    def _warn_sizes(self, grid):
        h, w = grid
        left = [k for k in self.model.sizes if h % k == 0 and w % k == 0]
        dropped = [k for k in self.model.sizes if k not in left]
        if dropped:
            log.warning("ddit: patch size(s) %s do not divide the %dx%d token grid; this generation uses sizes %s",
                        dropped, h, w, left)


def _latent_grid(img_ids):
    """(N_fine, (h, w)) of the latent being denoised: the leading image ids that share the first id's frame index
    (FluxKontextPipeline appends its reference image's ids with another frame index)."""
    frame = img_ids[:, 0]
    differs = (frame != frame[0]).nonzero()
    n = int(differs[0, 0]) if len(differs) else img_ids.shape[0]
    ids = img_ids[:n]
    return n, (int(ids[:, 1].max()) + 1, int(ids[:, 2].max()) + 1)


def _calling_pipeline_scheduler(wrapper):
    """The scheduler of the diffusers pipeline whose ``__call__`` is calling ``wrapper`` (its ``transformer`` or
    ``transformer_2``), found on the call stack; ``None`` when the wrapper is called outside a pipeline."""
    import sys

    from diffusers import DiffusionPipeline

    frame = sys._getframe(1)
    for _ in range(64):
        if frame is None:
            break
        owner = frame.f_locals.get("self")
        if isinstance(owner, DiffusionPipeline) and any(
                getattr(owner, name, None) is wrapper for name in ("transformer", "transformer_2")):
            return getattr(owner, "scheduler", None)
        frame = frame.f_back
    return None


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
