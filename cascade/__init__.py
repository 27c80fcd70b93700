"""The diffusion cascade: world roots, the 2x super-resolution denoiser, global noise, sampling."""
