"""sympow.nn layers: shapes and dtypes, decoding equals the full forward (every layer, every form, float64
to 1e-10), split sequences, gradients to every parameter, torch.compile, bad input refused."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from sympow.nn import LayerState, SympowAttention  # noqa: E402
from sympow.testing.tolerances import tolerance  # noqa: E402

from .layers import ALL, inputs, layer, relative_error  # noqa: E402

FORMS = ("parallel", "recurrent", "chunked")


def options(name: str, form: str) -> dict:
    """The attention options of a layer call (softmax attention takes none)."""
    if name == "softmax":
        return {}
    return {"form": form, "chunk_size": 4} if form == "chunked" else {"form": form}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float64"])
@pytest.mark.parametrize("name", ALL)
def test_shapes_dtypes_and_accuracy(name, dtype):
    """y [B, T, hidden] in x's dtype; in float32 and bfloat16 within the tolerance table of the float64
    layer with the same (rounded) parameters and inputs."""
    wanted = getattr(torch, dtype)
    module, x = layer(name, wanted), inputs(11, wanted)
    y = module(x)
    assert y.shape == x.shape and y.dtype == wanted and y.device == x.device
    reference = layer(name, wanted).double()(x.double())
    assert relative_error(y, reference) <= tolerance(dtype)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("name", ALL)
def test_decode_token_by_token_equals_full_forward(name, form):
    """One call over T tokens equals T calls of one token, each resumed from the last state (outputs and,
    for the linear layers, the final state), in the same form, float64 to 1e-10."""
    module, x = layer(name), inputs(9)
    y, final = module(x, return_state=True, **options(name, form))
    state, outputs = None, []
    for t in range(x.shape[1]):
        y_t, state = module(x[:, t : t + 1], state, return_state=True, **options(name, form))
        outputs.append(y_t)
    assert relative_error(torch.cat(outputs, dim=1), y) <= tolerance("float64")
    if name != "softmax":
        assert (
            relative_error(
                state.attention.S * state.attention.log_scale.exp()[..., None, None],
                final.attention.S * final.attention.log_scale.exp()[..., None, None],
            )
            <= 1e-10
        )
        if final.conv is not None:
            assert torch.equal(state.conv, final.conv)


@pytest.mark.parametrize("name", ALL)
def test_split_sequence_resumed_equals_one_call(name):
    """Two calls (7 then 6 tokens, the second from the first's state, a different form each) equal one."""
    module, x = layer(name), inputs(13)
    y = module(x, **options(name, "chunked"))
    first, state = module(x[:, :7], return_state=True, **options(name, "parallel"))
    second = module(x[:, 7:], state, **options(name, "recurrent"))
    assert relative_error(torch.cat([first, second], dim=1), y) <= tolerance("float64")


@pytest.mark.parametrize("name", ALL)
def test_gradients_reach_every_parameter(name):
    """A loss of the outputs (after a resumed call, so the state path is differentiated too) gives
    every parameter a finite, non-zero gradient."""
    module, x = layer(name), inputs(10)
    first, state = module(x[:, :6], return_state=True)
    second = module(x[:, 6:], state)
    weights = torch.randn(2, 10, x.shape[-1], generator=torch.Generator().manual_seed(5), dtype=x.dtype)
    (torch.cat([first, second], dim=1) * weights).sum().backward()
    for parameter_name, parameter in module.named_parameters():
        assert parameter.grad is not None, parameter_name
        assert torch.isfinite(parameter.grad).all(), parameter_name
        assert parameter.grad.abs().max() > 0, parameter_name


# Dynamo warns when it traces through array_api_compat's own lru_cache'd type checks (they hold no
# tensor, so tracing them is sound), and its own inspection of a non-leaf tensor's attributes trips
# torch's warning about reading .grad (nothing of ours reads it).
@pytest.mark.filterwarnings("ignore:Dynamo detected a call to a `functools.lru_cache`")
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf Tensor")
@pytest.mark.parametrize("name", ["conformal", "leapformer-floor", "based", "rebased", "softmax"])
def test_torch_compile_matches_eager(name):
    """torch.compile of each layer class (graph breaks allowed where ``attention`` reads values to
    check them; SympowAttention with gates and rotary, LeaPformer with its floor) gives the eager output
    and gradients, float32."""
    module, x = layer(name, torch.float32), inputs(12, torch.float32)
    torch._dynamo.reset()
    compiled = torch.compile(module, backend="aot_eager")
    y, y_eager = compiled(x), module(x)
    torch.testing.assert_close(y, y_eager, rtol=1e-5, atol=1e-6)
    grads = torch.autograd.grad(y.sum(), list(module.parameters()))
    grads_eager = torch.autograd.grad(y_eager.sum(), list(module.parameters()))
    for grad, grad_eager in zip(grads, grads_eager, strict=True):
        torch.testing.assert_close(grad, grad_eager, rtol=1e-4, atol=1e-5)


def test_options_pass_through_to_attention():
    """Further keywords reach ``sympow.attention``: a float64 state path shows in the returned State,
    and an unknown option is refused by name."""
    module, x = layer("sympow", torch.float32), inputs(5, torch.float32)
    _, state = module(x, return_state=True, state_dtype="float64", form="recurrent")
    assert state.attention.S.dtype == torch.float64
    with pytest.raises(TypeError, match="nonsense"):
        module(x, nonsense=1)


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: SympowAttention(16, 2, power=3), "power must be an even int"),
        (lambda: SympowAttention(16, 2, rotary="learned"), "rotary must be one of"),
        (lambda: SympowAttention(16, 2, rotary="fixed", head_dim=3), "even head_dim"),
        (lambda: SympowAttention(16, 32), "query_dim must be an int >= 1"),
    ],
)
def test_bad_constructor_arguments_are_refused(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_bad_inputs_and_states_are_refused():
    module, x = layer("based"), inputs(5)
    with pytest.raises(ValueError, match=r"x must have shape \[batch, T, hidden_size=16\]"):
        module(x[..., :8])
    _, state = module(x, return_state=True)
    with pytest.raises(TypeError, match=r"state must be a sympow\.nn\.LayerState"):
        module(x, state.attention)
    with pytest.raises(ValueError, match=r"state\.conv must have shape"):
        module(x, LayerState(state.attention, state.conv[:, :1]))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", ALL)
def test_cuda_matches_cpu(name, dtype):
    """On CUDA the layer's output stays on the device, in x's dtype, within the tolerance table of the
    float64 CPU layer."""
    wanted = getattr(torch, dtype)
    module, x = layer(name, wanted).cuda(), inputs(70, wanted).cuda()
    y = module(x)
    assert y.device.type == "cuda" and y.dtype == wanted
    reference = layer(name, wanted).double()(x.double().cpu())
    assert relative_error(y.cpu(), reference) <= tolerance(dtype)
