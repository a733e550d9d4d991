"""Custom compute kernels (Pallas TPU/GPU with XLA fallbacks)."""
