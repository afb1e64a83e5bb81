"""Peregrine pre-/post-processing kernels."""
