"""Mixed precision: a policy of three dtypes, applied to a whole model in one call.

A `Policy` names the dtype of the stored params, of the computation and of the outputs, the
triple of jmp's ``Policy`` and Keras's ``DTypePolicy``::

    model = nn.mixed_precision(nn.serial(nn.dense(512), nn.relu, nn.dense(10)), "bfloat16")
    out_shape, params, state = model.init(key, (batch, 784))      # params in float32
    y, state = model.apply(params, state, x)                        # matmuls in bfloat16, y float32

`mixed_precision` wraps a layer without rewriting it: params are stored in `param_dtype`,
cast to `compute_dtype` on every `apply` together with the floating inputs, and the floating
outputs are cast to `output_dtype`. The casts are differentiable, so the gradient of a loss
with respect to the stored params comes back in `param_dtype`: an optimizer keeps its moments
and updates in float32 while the model computes in half precision.

What stays in float32 under a half `compute_dtype`: the statistics of the norms (mean,
variance, mean square) and of `softmax` / `log_softmax` (the attention weights included),
which are taken in float32 and rounded once; the model state (batch-norm running
statistics), which keeps the dtype `init` gave it; and the losses of `funcnet.losses`, which
compute half inputs in float32.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from funcnet.nn.core import Layer, as_layer

__all__ = ["Policy", "mixed_precision", "policy"]

# The dtypes a policy may name, by every name it may give them (jmp's short names included).
_DTYPES = {
    "float16": np.dtype(jnp.float16),
    "f16": np.dtype(jnp.float16),
    "bfloat16": np.dtype(jnp.bfloat16),
    "bf16": np.dtype(jnp.bfloat16),
    "float32": np.dtype(jnp.float32),
    "f32": np.dtype(jnp.float32),
    "full": np.dtype(jnp.float32),
    "float64": np.dtype(jnp.float64),
    "f64": np.dtype(jnp.float64),
}
_ALLOWED = "float16, bfloat16, float32 or float64"
_FLOAT32, _BFLOAT16, _FLOAT16 = _DTYPES["float32"], _DTYPES["bfloat16"], _DTYPES["float16"]


class Policy(NamedTuple):
    """The dtypes of a mixed-precision model: `param_dtype` of the stored params,
    `compute_dtype` of the params and floating inputs while the layers run, `output_dtype` of
    the floating outputs. Build it with `policy`, which checks the dtypes."""

    param_dtype: np.dtype
    compute_dtype: np.dtype
    output_dtype: np.dtype


_NAMED = {
    "float32": Policy(_FLOAT32, _FLOAT32, _FLOAT32),
    "bfloat16": Policy(_FLOAT32, _BFLOAT16, _FLOAT32),
    "mixed_bfloat16": Policy(_FLOAT32, _BFLOAT16, _FLOAT32),
    "float16": Policy(_FLOAT32, _FLOAT16, _FLOAT32),
    "mixed_float16": Policy(_FLOAT32, _FLOAT16, _FLOAT32),
}
_KEYS = {"p": 0, "params": 0, "c": 1, "compute": 1, "o": 2, "output": 2}


def _dtype(value: Any, spec: Any) -> np.dtype:
    """`value` (a name or a dtype) as one of the four float dtypes, or a ValueError."""
    if isinstance(value, str):
        dtype = _DTYPES.get(value.strip())
    else:
        try:
            dtype = np.dtype(value)
        except TypeError:
            dtype = None
    if dtype is None or dtype not in _DTYPES.values():
        raise ValueError(
            f"policy: {value!r} in {spec!r} is not a dtype a policy may use; expected "
            f"{_ALLOWED} (or f16, bf16, f32, full, f64)"
        )
    if dtype == np.float64 and not jax.config.jax_enable_x64:
        raise ValueError(f"policy: float64 in {spec!r} needs jax_enable_x64 on")
    return dtype


def _parse(spec: str) -> Policy:
    """jmp's form ``"params=float32,compute=bfloat16,output=float32"``; unnamed entries
    default as in jmp: params float32, compute as params, output as compute."""
    dtypes: list[np.dtype | None] = [_FLOAT32, None, None]
    for part in spec.split(","):
        key, sep, value = part.partition("=")
        if not sep or key.strip() not in _KEYS:
            raise ValueError(
                f"policy: {part.strip()!r} in {spec!r} is not key=dtype with key params, "
                "compute or output (p, c, o)"
            )
        dtypes[_KEYS[key.strip()]] = _dtype(value, spec)
    param_dtype, compute_dtype, output_dtype = dtypes
    compute_dtype = param_dtype if compute_dtype is None else compute_dtype
    return Policy(
        param_dtype, compute_dtype, compute_dtype if output_dtype is None else output_dtype
    )


def policy(spec: Policy | str) -> Policy:
    """A `Policy` from its name, its jmp string or a `Policy` (checked, dtypes normalised).

    Names: ``"float32"`` (everything float32); ``"bfloat16"`` or ``"mixed_bfloat16"`` (params
    float32, compute bfloat16, output float32), ``"float16"`` or ``"mixed_float16"`` (the same
    with float16). jmp and Keras read a bare dtype name as that dtype everywhere; here a
    bare half name is the mixed policy (Keras's ``"mixed_bfloat16"``), the one almost always
    meant, and params stored in half precision need the explicit form below.

    jmp's form: ``"params=float32,compute=bfloat16,output=float32"``, keys also ``p``, ``c``,
    ``o``; params default to float32, compute to the params' dtype, output to compute's.
    Dtypes are float16, bfloat16, float32 and float64 (the last under ``jax_enable_x64``);
    anything else (int8, bool, complex64, ...) or an unknown name raises a ValueError.
    """
    if isinstance(spec, Policy):
        return Policy(*(_dtype(d, spec) for d in spec))
    if not isinstance(spec, str):
        raise ValueError(
            f"policy: expected a Policy or a string, got {type(spec).__name__} {spec!r}"
        )
    if "=" in spec:
        return _parse(spec)
    if spec.strip() not in _NAMED:
        raise ValueError(
            f"policy: unknown policy {spec!r}; expected one of {', '.join(_NAMED)}, a Policy, "
            "or 'params=float32,compute=bfloat16,output=float32'"
        )
    return _NAMED[spec.strip()]


_as_policy = policy  # `mixed_precision`'s argument is named `policy`


def _cast_floating(tree: Any, dtype: np.dtype) -> Any:
    """`tree` with its floating-point array leaves cast to `dtype`; other leaves (integer
    and bool arrays, None, Python values) as they are."""

    def cast(leaf: Any) -> Any:
        leaf_dtype = getattr(leaf, "dtype", None)
        if leaf_dtype is None or not jnp.issubdtype(leaf_dtype, jnp.floating):
            return leaf
        return leaf if leaf_dtype == dtype else jnp.asarray(leaf).astype(dtype)

    return jax.tree.map(cast, tree)


def mixed_precision(layer: Layer, policy: Policy | str) -> Layer:
    """`layer` run under a mixed-precision `Policy` (or anything `policy` takes).

    - ``init(key, in_shape)``: the wrapped layer's init, its floating params cast to
      `param_dtype`; the state and the output shape as the wrapped layer gives them.
    - ``apply(params, state, x, *, key=None, train=False)``: the floating params and the
      floating leaves of `x` (an array or a pytree, e.g. ``(x, mask)``; integer and bool
      leaves such as masks and token ids are left alone) are cast to `compute_dtype`, the
      wrapped layer runs, and the floating leaves of its output are cast to `output_dtype`.
      The state goes in and comes out as the wrapped layer keeps it (batch norm's running
      statistics stay in their float32).

    The params tree and the `kind` are the wrapped layer's, so params and checkpoints move
    between the plain and the wrapped model. Gradients with respect to the params come back
    in `param_dtype`. The ``"float32"`` policy on a float32 model adds no operation.
    """
    layer = as_layer(layer, owner="mixed_precision")
    chosen = _as_policy(policy)

    def init(key, in_shape):
        out_shape, params, state = layer.init(key, in_shape)
        return out_shape, _cast_floating(params, chosen.param_dtype), state

    def apply(params, state, x, *, key=None, train=False):
        params = _cast_floating(params, chosen.compute_dtype)
        x = _cast_floating(x, chosen.compute_dtype)
        y, state = layer.apply(params, state, x, key=key, train=train)
        return _cast_floating(y, chosen.output_dtype), state

    return Layer(init, apply, kind=layer.kind)
