"""The runtime: denoising loop, schedulers' dispatch, backends and the diffusers pipeline drop-in."""
