"""Every CUDA C instantiation compiles through NVRTC (compile only: no driver or GPU is needed).

The programs are built as CuPy's RawModule builds them: the source of ``cuda_sources``, one
nvrtcAddNameExpression per instantiation, ``--std=c++17`` and the include folders of ``include_dirs``;
here for ``-arch=compute_90`` (PTX). The test asserts that PTX came back, that every name expression was
lowered to a mangled name, and that the PTX defines an entry point of that name.
"""

from __future__ import annotations

import pytest

from sympow.kernels import cuda_sources

nvrtc = pytest.importorskip("cuda.bindings.nvrtc", reason="cuda-bindings (the `test` extra) is not installed")


def check(result, program=None):
    """The value(s) of an NVRTC call, or an AssertionError with the program log."""
    status, *values = result if isinstance(result, tuple) else (result,)
    if status != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        log = ""
        if program is not None:
            _, size = nvrtc.nvrtcGetProgramLogSize(program)
            buffer = b" " * size
            nvrtc.nvrtcGetProgramLog(program, buffer)
            log = buffer.decode(errors="replace")
        raise AssertionError(f"NVRTC returned {status}:\n{log}")
    return values[0] if len(values) == 1 else values


def compile_source(source: str, arch: str = "compute_90") -> tuple[str, dict[str, str]]:
    """(PTX, {name expression: lowered name}) of one source with all its instantiations."""
    program = check(
        nvrtc.nvrtcCreateProgram(cuda_sources.read_source(source).encode(), source.encode(), 0, [], [])
    )
    try:
        names = cuda_sources.name_expressions(source)
        for name in names:
            check(nvrtc.nvrtcAddNameExpression(program, name.encode()), program)
        includes = cuda_sources.include_dirs()
        options = [*cuda_sources.COMPILE_OPTIONS, f"-arch={arch}", *(f"-I{p}" for p in includes)]
        check(nvrtc.nvrtcCompileProgram(program, len(options), [o.encode() for o in options]), program)
        size = check(nvrtc.nvrtcGetPTXSize(program))
        buffer = b" " * size
        check(nvrtc.nvrtcGetPTX(program, buffer))
        lowered = {name: check(nvrtc.nvrtcGetLoweredName(program, name.encode())).decode() for name in names}
        return buffer.decode(errors="replace"), lowered
    finally:
        nvrtc.nvrtcDestroyProgram(program)


def test_fp16_headers_are_found():
    includes = cuda_sources.include_dirs()
    assert len(includes) == 2, (
        f"no folder with cuda_fp16.h and cuda_bf16.h was found (looked in the nvidia-cuda-runtime wheel, "
        f"$CUDA_PATH, $CUDA_HOME, /usr/local/cuda); got {includes}"
    )


def test_every_kernel_has_instantiations():
    names = [n for source in cuda_sources.SOURCES for n in cuda_sources.name_expressions(source)]
    # 2 chunked and 1 recurrent kernels x 3 dtypes x 3 powers, plus the recurrent output x 3 dtypes
    assert len(names) == 3 * 9 + 3 and len(set(names)) == len(names)
    assert "sympow_chunk_states<__nv_bfloat16, 2>" in names
    assert "sympow_recurrent_output<__half>" in names


@pytest.mark.parametrize("source", cuda_sources.SOURCES)
def test_every_instantiation_compiles(source):
    ptx, lowered = compile_source(source)
    assert ptx.strip(), f"{source}: NVRTC produced no PTX"
    assert ".target sm_90" in ptx
    names = cuda_sources.name_expressions(source)
    assert set(lowered) == set(names)
    for name, mangled in lowered.items():
        kernel = name.split("<", 1)[0]
        assert mangled.startswith("_Z") and kernel in mangled, f"{name} lowered to {mangled!r}"
        assert f".entry {mangled}(" in ptx, f"{source}: no PTX entry point for {name} ({mangled})"
