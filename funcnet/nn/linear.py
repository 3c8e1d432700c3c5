"""Dense (fully connected) layer."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from funcnet._checks import check_flag, check_float_dtype, check_int
from funcnet.nn import initializers
from funcnet.nn.core import Layer, LayerError, check_params, check_shape, input_shape

__all__ = ["dense"]


def dense(
    features: int,
    *,
    use_bias: bool = True,
    w_init: str | initializers.Initializer = "lecun_normal",
    b_init: str | initializers.Initializer = "zeros",
    dtype=None,
) -> Layer:
    """Affine map ``y = x W + b`` on the last axis.

    Params: ``w`` of shape ``(in_features, features)`` and ``b`` of shape ``(features,)``
    (absent with ``use_bias=False``). Input: an array of shape ``(..., in_features)``;
    output: ``(..., features)``. `w_init` and `b_init` are initializers or their names
    (``"he_normal"``, ``"glorot_uniform"``, ...); `dtype` is the params' dtype (JAX's default
    float when None).
    """
    features = check_int("dense", "features", features)
    w_init, b_init = initializers.named("dense", w_init=w_init, b_init=b_init)
    check_float_dtype("dense", dtype)
    check_flag("dense", "use_bias", use_bias)

    def init(key, in_shape):
        in_shape = check_shape("dense", in_shape, "an input (..., features)", min_rank=1)
        w_key, b_key = jax.random.split(key)
        params = {"w": w_init(w_key, (in_shape[-1], features), dtype)}
        if use_bias:
            params["b"] = b_init(b_key, (features,), dtype)
        return (*in_shape[:-1], features), params, {}

    def apply(params, state, x, *, key=None, train=False):
        del key, train
        check_params("dense", params, "w", *("b",) * use_bias)
        w = params["w"]
        bias_shape = tuple(params["b"].shape) if "b" in params else (features,)
        if w.ndim != 2 or w.shape[1] != features or bias_shape != (features,):
            shapes = {k: tuple(v.shape) for k, v in params.items()}
            raise LayerError(
                "dense",
                f"params of shapes {shapes} do not belong to a dense layer of {features} "
                f"features (w: (in, {features}), b: ({features},)); were they made by another "
                "model's init?",
            )
        check_shape(
            "dense",
            input_shape("dense", x),
            f"an input with {w.shape[0]} features on the last axis (kernel w has shape "
            f"{tuple(w.shape)})",
            min_rank=1,
            last=w.shape[0],
        )
        y = jnp.matmul(x, w)
        if "b" in params:
            y = y + params["b"]
        return y, state

    return Layer(init, apply, kind="dense")
