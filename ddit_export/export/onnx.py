"""Exporting the multi-patch transformer (one graph per size) and the word text encoder with
``torch.onnx.export(dynamo=True)``; the only exporter whose shapes and RMSNorm work for FLUX (deployment notes)."""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..shapes import TokenGeometry

TRANSFORMER_INPUTS = ("hidden_states", "encoder_hidden_states", "pooled_projections", "timestep", "img_ids",
                      "txt_ids")
WAN_INPUTS = ("hidden_states", "timestep", "encoder_hidden_states")  # fine video tokens, timestep, text states
TEXT_INPUTS = ("input_ids", "attention_mask")
OPSET = 18
EXPORT_BATCH = 2  # an example batch of 1 would specialise the batch axis to 1


@contextlib.contextmanager
def float32_rope():
    """diffusers computes FLUX's RoPE frequencies in float64 on CPU; TensorRT has no FP64. Patched while
    exporting, restored on exit."""
    import diffusers.models.transformers.transformer_flux as tf

    original = tf.maybe_adjust_dtype_for_device
    tf.maybe_adjust_dtype_for_device = lambda dtype, device: torch.float32 if dtype == torch.float64 else dtype
    try:
        yield
    finally:
        tf.maybe_adjust_dtype_for_device = original


@contextlib.contextmanager
def quiet_export():
    """torch.onnx prints progress lines and warns about torchvision ops it skips; keep the CLI's output readable."""
    import io
    import logging
    import warnings

    log = logging.getLogger("torch.onnx")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)


class VariantModule(nn.Module):
    """Size k of a MultiPatchFlux with the grid fixed: the exact contract every backend runs."""

    def __init__(self, model, size: int, grid: tuple[int, int], guidance: bool):
        super().__init__()
        self.model, self.size, self.grid, self.guidance = model, size, grid, guidance

    def forward(self, hidden_states, encoder_hidden_states, pooled_projections, timestep, img_ids, txt_ids,
                guidance=None):
        return self.model(hidden_states, encoder_hidden_states, pooled_projections, timestep, img_ids, txt_ids,
                          guidance if self.guidance else None, size=self.size, grid=self.grid)


class WanVariantModule(nn.Module):
    """Size k of a MultiPatchWan with the (F, h, w) grid fixed: fine video tokens, timestep (0..1000), text states
    in; velocity in fine-token form out."""

    def __init__(self, model, size: int, grid: tuple[int, int, int]):
        super().__init__()
        self.model, self.size, self.grid = model, size, grid

    def forward(self, hidden_states, timestep, encoder_hidden_states):
        return self.model(hidden_states, timestep, encoder_hidden_states, size=self.size, grid=self.grid)


def is_wan(model) -> bool:
    return getattr(model, "family", "flux") == "wan"


def variant_module(model, size: int, geom) -> nn.Module:
    """The module one graph of ``size`` exports: the FLUX or the Wan contract."""
    if is_wan(model):
        return WanVariantModule(model, size, geom.grid)
    return VariantModule(model, size, geom.grid, bool(dict(model.config).get("guidance_embeds")))


def variant_input_names(model) -> tuple[str, ...]:
    if is_wan(model):
        return WAN_INPUTS
    return transformer_input_names(bool(dict(model.config).get("guidance_embeds")))


def variant_inputs(model, geom, text_len: int, dtype, batch: int = EXPORT_BATCH, seed: int = 0) -> tuple:
    """Random inputs of one variant graph, in the order of :func:`variant_input_names`."""
    cfg = dict(model.config)
    if not is_wan(model):
        return example_inputs(cfg, geom, text_len, dtype, batch=batch, seed=seed)
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(batch, geom.tokens(1), geom.token_channels, generator=g),
         torch.rand(batch, generator=g) * 1000, torch.randn(batch, text_len, cfg["text_dim"], generator=g))
    return tuple(t.to(dtype) for t in x)


def rope_context(model):
    """Float32 RoPE while exporting (TensorRT has no FP64): FLUX's patch, or the Wan wrapper's own."""
    if is_wan(model):
        from ..models.wan import float32_rope as wan_float32_rope

        return wan_float32_rope(model)
    return float32_rope()


class TextModule(nn.Module):
    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids, attention_mask):
        return self.encoder(input_ids, attention_mask)


def transformer_input_names(guidance: bool) -> tuple[str, ...]:
    return TRANSFORMER_INPUTS + (("guidance",) if guidance else ())


def example_inputs(cfg, geom: TokenGeometry, text_len: int, dtype, batch: int = EXPORT_BATCH, seed: int = 0):
    """Random inputs in the contract's shapes (fine-token latents whatever the size)."""
    from ..models.patching import image_ids

    g = torch.Generator().manual_seed(seed)
    n, c = geom.tokens(1), geom.token_channels
    x = [torch.randn(batch, n, c, generator=g), torch.randn(batch, text_len, cfg["joint_attention_dim"], generator=g),
         torch.randn(batch, cfg["pooled_projection_dim"], generator=g), torch.rand(batch, generator=g),
         image_ids(geom.grid), torch.zeros(text_len, 3)]
    if cfg.get("guidance_embeds"):
        x.append(torch.full((batch,), 3.5))
    return tuple(t.to(dtype) for t in x)


def _dynamic_batch(names, batched):
    batch = torch.export.Dim("batch", min=1, max=64)
    return {n: ({0: batch} if n in batched else None) for n in names}


def strip_metadata(model_proto):
    """Drop per-node metadata and doc strings: in dynamo graphs they outweigh small models' weights."""
    for node in model_proto.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    del model_proto.graph.value_info[:]
    model_proto.doc_string = ""
    return model_proto


def export_variant(model, size: int, geom: TokenGeometry, text_len: int, dtype=torch.float32):
    """torch.onnx.ONNXProgram of size ``size`` (float32 RoPE, dynamic batch); FLUX or Wan by the model."""
    names = variant_input_names(model)
    module = variant_module(model, size, geom).eval()
    args = variant_inputs(model, geom, text_len, dtype)
    batched = set(names) - {"img_ids", "txt_ids"}
    with rope_context(model), torch.no_grad(), quiet_export():
        prog = torch.onnx.export(module, args, dynamo=True, opset_version=OPSET, input_names=list(names),
                                 output_names=["velocity"], dynamic_shapes=_dynamic_batch(names, batched),
                                 verbose=False)
    return prog


def program_to_proto(prog, scratch):
    """Save an ONNXProgram with its weights as external data in ``scratch`` and load the graph alone, stripped.

    The one path for every model size: a FLUX.1-dev graph is far over protobuf's 2 GB limit, so its weights can
    never sit inside one ModelProto; the shared-weights writer reads them from ``scratch`` instead."""
    import onnx

    scratch.mkdir(parents=True, exist_ok=True)
    path = scratch / "model.onnx"
    prog.save(str(path), external_data=True)
    return strip_metadata(onnx.load(str(path), load_external_data=False))


def export_text_encoder(encoder, text_len: int):
    ids = torch.ones(EXPORT_BATCH, text_len, dtype=torch.long)
    mask = torch.ones(EXPORT_BATCH, text_len, dtype=torch.bool)
    with torch.no_grad(), quiet_export():
        prog = torch.onnx.export(TextModule(encoder).eval(), (ids, mask), dynamo=True, opset_version=OPSET,
                                 input_names=list(TEXT_INPUTS), output_names=["states", "pooled"],
                                 dynamic_shapes=_dynamic_batch(TEXT_INPUTS, set(TEXT_INPUTS)), verbose=False)
    return prog
