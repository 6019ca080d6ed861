"""What the diffusers drop-ins share: :class:`DDiTDropIn`, the base of ``pipeline.DDiTTransformer`` (FLUX) and
``pipeline_wan.DDiTWanTransformer`` (Wan). One decision per step, a new history per generation (after
:meth:`DDiTDropIn.reset`, or at the first call of a generation given the pipeline's scheduler), the trunk's
LoRA/cache API reached through the wrapper, ``save_pretrained``/``from_pretrained``. Neither drop-in imports the
other: a saved folder names its trunk class, and the subclass registered for that family loads it.
"""
from __future__ import annotations

import contextlib
import json
import logging
from collections import deque
from pathlib import Path

from diffusers.models.modeling_utils import ModelMixin

from ..schedule import DDiTPolicy, Trace
from ..settings import ScheduleSettings

log = logging.getLogger("ddit_export")
SCHEDULE_FILE = "ddit_schedule.json"  # models/registry.py reads it too (DROP_IN_SCHEDULE_FILE)


class DDiTDropIn(ModelMixin):
    """What the FLUX and Wan drop-ins share (each subclass adds its family's call). A ``ModelMixin`` only so that
    ``pipe.save_pretrained`` finds a save method: it saves the trunk as the normal diffusers transformer, the adapters
    file and the schedule beside it, and ``FluxPipeline.from_pretrained`` loads the folder back wrapped (see
    :meth:`save_pretrained`)."""

    trunk_prefix = ""  # the diffusers trunk classes a subclass wraps: "Flux", "Wan"

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
        the wrapper follows its pipeline's scheduler, which the pipeline saves itself) beside it.
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
        wrapper = cls._wrapper_for(meta["trunk_class"], folder)
        trunk = trunk_cls.from_pretrained(str(folder), **kwargs)
        out = wrapper(wrapper.multipatch_class().from_trunk_and_adapters(trunk, folder),
                      ScheduleSettings(**meta["schedule"]))
        out._follow_pipeline_scheduler = bool(meta.get("pipeline_scheduler", False))
        return out

    @classmethod
    def multipatch_class(cls):
        """The models/ class a loaded trunk is wrapped in (MultiPatchFlux, MultiPatchWan)."""
        raise NotImplementedError

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("trunk_prefix"):
            _FAMILIES[cls.trunk_prefix] = cls

    @classmethod
    def _wrapper_for(cls, trunk_class: str, folder) -> type:
        """The drop-in class for a saved trunk: ``cls`` when its family matches, else the registered family's class
        (``DDiTTransformer.from_pretrained`` of a saved Wan folder gives a ``DDiTWanTransformer``)."""
        from ..errors import WeightsError

        if cls.trunk_prefix and trunk_class.startswith(cls.trunk_prefix):
            return cls
        for prefix, wrapper in _FAMILIES.items():
            if trunk_class.startswith(prefix):
                return wrapper
        raise WeightsError(f"{folder} holds a {trunk_class}, which no imported DDiT drop-in wraps (FLUX: "
                           f"ddit_export.runtime.pipeline.DDiTTransformer; Wan: "
                           f"ddit_export.runtime.pipeline_wan.DDiTWanTransformer)")

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

    def _warn_sizes(self, grid):
        h, w = grid
        left = [k for k in self.model.sizes if h % k == 0 and w % k == 0]
        dropped = [k for k in self.model.sizes if k not in left]
        if dropped:
            log.warning("ddit: patch size(s) %s do not divide the %dx%d token grid; this generation uses sizes %s",
                        dropped, h, w, left)


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


class _Output(dict):
    def __init__(self, sample):
        super().__init__(sample=sample)
        self.sample = sample

    def __getitem__(self, k):
        return self.sample if k == 0 else super().__getitem__(k)


_FAMILIES: dict[str, type] = {}  # trunk class prefix -> drop-in class (filled as the subclasses are defined)
