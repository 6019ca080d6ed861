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

import torch
# ModelMixin in this module's namespace: FluxPipeline.from_pretrained resolves the class recorded in model_index.json
# (["ddit_export.runtime.pipeline", "DDiTTransformer"]) and looks up its loadable base classes in this module
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401

from ..flops import step_flops
from ..schedule import StepRecord, Trace
from .dropin import SCHEDULE_FILE, DDiTDropIn, _Output  # noqa: F401 (SCHEDULE_FILE: re-exported)


class DDiTTransformer(DDiTDropIn):
    """The FLUX drop-in: ``FluxTransformer2DModel``'s call with dynamic patching (see :class:`DDiTDropIn` for what
    every drop-in shares, including ``save_pretrained``/``from_pretrained``)."""

    trunk_prefix = "Flux"

    @classmethod
    def multipatch_class(cls):
        from ..models.flux import MultiPatchFlux

        return MultiPatchFlux

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


def _latent_grid(img_ids):
    """(N_fine, (h, w)) of the latent being denoised: the leading image ids that share the first id's frame index
    (FluxKontextPipeline appends its reference image's ids with another frame index)."""
    frame = img_ids[:, 0]
    differs = (frame != frame[0]).nonzero()
    n = int(differs[0, 0]) if len(differs) else img_ids.shape[0]
    ids = img_ids[:n]
    return n, (int(ids[:, 1].max()) + 1, int(ids[:, 2].max()) + 1)


def _refuse_ip_adapter(joint_attention_kwargs):
    if joint_attention_kwargs and "ip_adapter_image_embeds" in joint_attention_kwargs:
        from ..errors import ConfigError

        raise ConfigError("IP-Adapter image embeddings are not supported by the DDiT drop-in (the coarse sizes "
                          "have no IP-Adapter path); run the plain transformer (pipe.transformer = "
                          "pipe.transformer.model.unwrap()) for IP-Adapter generations")
