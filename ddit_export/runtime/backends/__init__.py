"""Runtime backends: one small interface (load, run size k on fine-token latents, close)."""
