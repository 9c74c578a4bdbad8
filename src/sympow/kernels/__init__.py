"""Hand-written GPU kernels and the thin launchers that feed them (layout.md).

- ``numba_kernels``: Numba CUDA kernels (``numba.cuda.jit``) of the recurrent and chunked forms.
- ``numba_launch``: shapes, dtype casts, rotary, feature tables and grid sizes for ``numba_kernels``.
"""
