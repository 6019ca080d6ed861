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
FluxTransformer2DModel.forward does not take is refused with a ConfigError naming it.
"""
from __future__ import annotations

import contextlib
import logging
from collections import deque

from torch import nn

from ..flops import step_flops
from ..schedule import DDiTPolicy, StepRecord, Trace
from ..settings import ScheduleSettings

log = logging.getLogger("ddit_export")


class DDiTTransformer(nn.Module):
    def __init__(self, model, schedule: ScheduleSettings = ScheduleSettings(), policy_factory=None, scheduler=None):
        super().__init__()
        if schedule.policy != "ddit" and policy_factory is None:
            from ..errors import ConfigError

            raise ConfigError(f"the diffusers drop-in runs the DDiT rule (policy 'ddit'); policy {schedule.policy!r} "
                              f"needs the step count, which a pipeline call does not announce: pass "
                              f"policy_factory=lambda grid, sizes: ... (e.g. schedule.static.Ladder(steps, ...))")
        self.model = model
        self.schedule = schedule
        self.policy_factory = policy_factory or (lambda grid, sizes: DDiTPolicy(schedule, grid, sizes))
        self.scheduler = scheduler
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

    def cache_context(self, name: str):
        return contextlib.nullcontext()

    def forward(self, hidden_states, encoder_hidden_states=None, pooled_projections=None, timestep=None,
                img_ids=None, txt_ids=None, guidance=None, joint_attention_kwargs=None, controlnet_block_samples=None,
                controlnet_single_block_samples=None, return_dict=True, controlnet_blocks_repeat=False, **kwargs):
        if kwargs:
            from ..errors import ConfigError

            raise ConfigError(f"the DDiT drop-in does not support the keyword(s) {sorted(kwargs)} "
                              f"(FluxTransformer2DModel.forward does not take them either)")
        if img_ids.ndim == 3:
            img_ids = img_ids[0]
        if txt_ids.ndim == 3:
            txt_ids = txt_ids[0]
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
        controlnet = controlnet_block_samples is not None or controlnet_single_block_samples is not None
        if t != self._last_t:  # first call of this step (a true-CFG second call reuses the decision)
            channels = self.model.trunk.proj_out.out_features  # the latent's channels (Fill/Control append more)
            self._history.append(hidden_states[:, :n_fine, :channels].detach().float().cpu().numpy())
            step = len(self.trace.steps)
            d = self._policy.decide(step, self._history)
            size, reason = d.size, d.reason
            if controlnet and size != 1:  # ControlNet residuals are per fine token: such steps run fine
                size, reason = 1, "controlnet"
            self._size = size
            self.trace.steps.append(StepRecord(
                step, t, size, reason, grid[0] * grid[1] // size ** 2,
                float(step_flops(self.config, grid[0] * grid[1], encoder_hidden_states.shape[1], size,
                                 self.model.adapter_settings.rank, hidden_states.shape[0])), d.sigmas))
            self._last_t = t
        size = 1 if controlnet else self._size
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


class _Output(dict):
    def __init__(self, sample):
        super().__init__(sample=sample)
        self.sample = sample

    def __getitem__(self, k):
        return self.sample if k == 0 else super().__getitem__(k)
