"""The multi-patch-size model: patching helpers, LoRA, the FLUX wrapper, the text encoder and the registry."""
