"""CUDA sources of the GPU kernels (``.cu`` and ``.cuh``), read as text and compiled with
NVRTC at first use by ``vecstore.search.gpu``."""
