"""Quality of DDiT's coarse steps on the scene data set.

- :mod:`.detector`: the scene probe, a small CNN that reads a 32x32 scene back into per-cell shape / colour / size
  and background; its features define the Fréchet distance. Weights in ``weights/`` (trained by
  :mod:`.train_probe`).
- :mod:`.metrics`: PSNR, SSIM, caption parsing, prompt adherence, Fréchet distance.
- :mod:`.evaluate`: the evaluation behind ``ddit-export evaluate``.

Kept import-light: nothing here imports torch or diffusers until a submodule is used.
"""
