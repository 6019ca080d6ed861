"""A drop-in for ``WanPipeline.transformer`` (Wan 2.1 text-to-video): assign it and the user's own pipeline call
gets dynamic patching.

    pipe = WanPipeline.from_pretrained(DIR, local_files_only=True)
    pipe.transformer = DDiTWanTransformer(MultiPatchWan.from_trunk_and_adapters(pipe.transformer, ADAPTERS),
                                          scheduler=pipe.scheduler)
    video = pipe(prompt, num_frames=81, num_inference_steps=50).frames[0]
    print(pipe.transformer.trace.sizes)

Everything but the call itself is :class:`~ddit_export.runtime.dropin.DDiTDropIn`'s: one decision per step
(the classifier-free-guidance call at the same timestep reuses it), a new history per generation, the trunk's
LoRA/cache API reached through the wrapper, ``save_pretrained``/``from_pretrained`` (a saved wrapped pipe loads back
wrapped with ``WanPipeline.from_pretrained(DIR)``, schedule and scheduler included). The rule reads the latents
being denoised in fine-token form (the Wan patch's tokens, (frame, row, column) ordered). Image-to-video
(``encoder_hidden_states_image``) and Wan 2.2's per-token timesteps are refused with a ConfigError: the coarse sizes
have no path for them.
"""
from __future__ import annotations

import torch
# ModelMixin in this module's namespace: WanPipeline.from_pretrained resolves the class recorded in model_index.json
# (["ddit_export.runtime.pipeline_wan", "DDiTWanTransformer"]) and looks up its loadable base classes in this module
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401

from ..flops import step_flops
from ..schedule import StepRecord, Trace
from .dropin import DDiTDropIn, _Output


class DDiTWanTransformer(DDiTDropIn):
    """The Wan drop-in, for a :class:`~ddit_export.models.wan.MultiPatchWan`: WanTransformer3DModel's call."""

    trunk_prefix = "Wan"

    @classmethod
    def multipatch_class(cls):
        from ..models.wan import MultiPatchWan

        return MultiPatchWan

    @torch.compiler.disable
    def _decide_video(self, tokens, encoder_hidden_states, timestep, grid) -> int:
        t = float(timestep.flatten()[0])
        if self._new_generation(t):
            self._reset()
            self._policy = self.policy_factory(grid, self.model.sizes)
            self._warn_sizes(grid[-2:])
            n = grid[0] * grid[1] * grid[2]
            self.trace = Trace("pipeline", grid, {"schedule": vars(self.schedule)},
                               fine_flops_per_step=step_flops(self.config, n, encoder_hidden_states.shape[1], 1,
                                                              batch=tokens.shape[0]))
        if t != self._last_t:  # first call of this step (the CFG call at the same timestep reuses the decision)
            self._history.append(tokens.detach().float().cpu().numpy())
            step = len(self.trace.steps)
            d = self._policy.decide(step, self._history)
            if step == 0 or d.size != self._size:
                self._reset_trunk_caches()
            self._size = d.size
            n = grid[0] * grid[1] * grid[2]
            self.trace.steps.append(StepRecord(
                step, t, d.size, d.reason, n // d.size ** 2,
                float(step_flops(self.config, n, encoder_hidden_states.shape[1], d.size,
                                 self.model.adapter_settings.rank, tokens.shape[0])), d.sigmas))
            self._last_t = t
        return self._size

    def forward(self, hidden_states, timestep=None, encoder_hidden_states=None, encoder_hidden_states_image=None,
                return_dict=True, attention_kwargs=None, **kwargs):
        from ..errors import ConfigError
        from ..models.wan import pack_video, unpack_video

        if kwargs:
            raise ConfigError(f"the DDiT Wan drop-in does not support the keyword(s) {sorted(kwargs)} "
                              f"(WanTransformer3DModel.forward does not take them either)")
        if encoder_hidden_states_image is not None:
            raise ConfigError("image-to-video (encoder_hidden_states_image) is not supported by the DDiT Wan drop-in: "
                              "the coarse sizes have no image-embedding path; run the plain transformer "
                              "(pipe.transformer = pipe.transformer.model.unwrap())")
        if timestep is not None and timestep.ndim == 2:
            raise ConfigError("per-token timesteps (Wan 2.2 TI2V, expand_timesteps) are not supported by the DDiT "
                              "Wan drop-in")
        patch = tuple(self.config.patch_size)
        _, _, f, h, w = hidden_states.shape
        grid = (f // patch[0], h // patch[1], w // patch[2])
        tokens = pack_video(hidden_states, patch)
        size = self._decide_video(tokens, encoder_hidden_states, timestep, grid)
        out = self.model(tokens, timestep, encoder_hidden_states, size=size, grid=grid,
                         attention_kwargs=attention_kwargs)
        out = unpack_video(out, (f, h, w), patch)
        return (out,) if not return_dict else _Output(out)
