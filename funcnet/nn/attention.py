"""Multi-head self-attention and the pre-norm transformer block.

Both take a sequence ``x`` of shape ``(batch, time, features)``, or a pair ``(x, mask)`` with a
padding mask of shape ``(batch, time)``, boolean, True where a position holds a real token and
False where it is padding. Padded positions are never attended to (as keys); their own outputs
are computed but meaningless (a query that sees no key at all, such as a padded first position
under a causal mask, averages all values uniformly). The output has the form of the input:
``y`` for ``x``, and ``(y, mask)`` for ``(x, mask)``, so masked layers stack in `serial`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from funcnet.nn import initializers
from funcnet.nn.activations import gelu
from funcnet.nn.core import Layer, LayerError, check_floating, check_shape, scope, serial
from funcnet.nn.dropout import dropout
from funcnet.nn.linear import dense
from funcnet.nn.norm import layer_norm

__all__ = ["multi_head_attention", "transformer_block"]

Array = jax.Array


def _split_shape(kind: str, in_shape) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
    """``(x_shape, mask_shape or None)`` from ``x_shape`` or ``(x_shape, mask_shape)``."""
    in_shape = tuple(in_shape)
    if len(in_shape) == 2 and all(isinstance(s, (tuple, list)) for s in in_shape):
        x_shape, mask_shape = tuple(in_shape[0]), tuple(in_shape[1])
    else:
        x_shape, mask_shape = in_shape, None
    if len(x_shape) != 3 or not all(isinstance(d, int) for d in x_shape):
        raise LayerError(
            kind,
            f"expected x of shape (batch, time, features) or a pair (x, mask), got {in_shape}",
        )
    if mask_shape is not None and mask_shape != x_shape[:2]:
        raise LayerError(
            kind, f"the mask must have shape (batch, time) = {x_shape[:2]}, got {mask_shape}"
        )
    return x_shape, mask_shape


def _split_input(kind: str, inputs) -> tuple[Array, Array | None]:
    if isinstance(inputs, (tuple, list)):
        if len(inputs) != 2:
            raise LayerError(kind, f"expected x or a pair (x, mask), got {len(inputs)} inputs")
        x, mask = inputs
    else:
        x, mask = inputs, None
    check_shape(kind, x.shape, "x of shape (batch, time, features)", min_rank=3, max_rank=3)
    check_floating(kind, x)
    if mask is not None:
        if mask.shape != x.shape[:2] or mask.dtype != jnp.bool_:
            raise LayerError(
                kind,
                f"the mask must be a bool array of shape (batch, time) = {tuple(x.shape[:2])}, "
                f"True = keep; got {mask.dtype}{list(mask.shape)}",
            )
    return x, mask


def _out_shape(x_shape: tuple[int, ...], mask_shape: tuple[int, ...] | None):
    return x_shape if mask_shape is None else (x_shape, mask_shape)


def _like_input(inputs, y: Array, mask: Array | None):
    return y if mask is None and not isinstance(inputs, (tuple, list)) else (y, mask)


def multi_head_attention(
    num_heads: int,
    *,
    head_dim: int | None = None,
    causal: bool = False,
    w_init: str | initializers.Initializer = "glorot_uniform",
    b_init: str | initializers.Initializer = "zeros",
    dtype=None,
) -> Layer:
    """Multi-head scaled dot-product self-attention (Vaswani et al., 2017).

    For each head ``h`` with ``Q_h = x W_q,h + b_q,h`` (and likewise ``K_h``, ``V_h``), each of
    width ``d = head_dim``::

        A_h = softmax(Q_h K_hᵀ / √d + M),    y = [A_1 V_1 | ... | A_H V_H] W_o + b_o

    the softmax over keys, with ``M`` = −∞ at the keys a query may not see: padding (mask
    False) and, with ``causal=True``, later positions (``j > i``).

    Input ``x`` ``(batch, time, features)`` or ``(x, mask)`` (module docstring); output of the
    same form, ``y`` of shape ``(batch, time, features)``. `head_dim` defaults to
    ``features // num_heads``. Params ``q``, ``k``, ``v``, each ``{"w": (features, H·d),
    "b": (H·d,)}``, and ``o`` ``{"w": (H·d, features), "b": (features,)}``.
    """
    if num_heads < 1 or (head_dim is not None and head_dim < 1):
        raise ValueError(
            f"multi_head_attention: num_heads and head_dim must be positive, got "
            f"{num_heads} and {head_dim}"
        )
    w_init, b_init = initializers.get(w_init), initializers.get(b_init)

    def init(key, in_shape):
        x_shape, mask_shape = _split_shape("multi_head_attention", in_shape)
        features = x_shape[-1]
        if head_dim is None and features % num_heads:
            raise LayerError(
                "multi_head_attention",
                f"{features} features do not split into {num_heads} heads; pass head_dim",
            )
        width = num_heads * (head_dim or features // num_heads)
        params = {}
        for i, (name, shape) in enumerate(
            [
                ("q", (features, width)),
                ("k", (features, width)),
                ("v", (features, width)),
                ("o", (width, features)),
            ]
        ):
            w_key, b_key = jax.random.split(jax.random.fold_in(key, i))
            params[name] = {"w": w_init(w_key, shape, dtype), "b": b_init(b_key, shape[1:], dtype)}
        return _out_shape(x_shape, mask_shape), params, {}

    def apply(params, state, inputs, *, key=None, train=False):
        del key, train
        x, mask = _split_input("multi_head_attention", inputs)
        features = params["q"]["w"].shape[0]
        expected = f"{features} features on the last axis"
        check_shape("multi_head_attention", x.shape, expected, last=features)
        batch, time, _ = x.shape
        d = params["q"]["w"].shape[1] // num_heads

        def heads(name):  # (batch, time, features) -> (batch, heads, time, d)
            z = x @ params[name]["w"] + params[name]["b"]
            return z.reshape(batch, time, num_heads, d).transpose(0, 2, 1, 3)

        q, k, v = heads("q"), heads("k"), heads("v")
        scores = jnp.einsum("bhid,bhjd->bhij", q, k) / math.sqrt(d)
        visible = jnp.ones((batch, 1, time, time), bool)
        if mask is not None:
            visible = visible & mask[:, None, None, :]
        if causal:
            visible = visible & jnp.tril(jnp.ones((time, time), bool))
        # A finite floor rather than -inf: a row with no visible key averages uniformly
        # instead of turning into NaN.
        scores = jnp.where(visible, scores, jnp.finfo(scores.dtype).min)
        weights = jax.nn.softmax(scores, axis=-1)
        out = jnp.einsum("bhij,bhjd->bhid", weights, v)
        out = out.transpose(0, 2, 1, 3).reshape(batch, time, num_heads * d)
        y = out @ params["o"]["w"] + params["o"]["b"]
        return _like_input(inputs, y, mask), state

    return Layer(init, apply, kind="multi_head_attention")


def transformer_block(
    num_heads: int,
    mlp_dim: int,
    *,
    dropout_rate: float = 0.0,
    causal: bool = False,
    head_dim: int | None = None,
    eps: float = 1e-5,
) -> Layer:
    """A pre-norm transformer block (as in GPT-2 and ViT)::

        h = x + Dropout(MHA(LN₁(x)))
        y = h + MLP(LN₂(h)),    MLP = Dense(mlp_dim) → GELU → Dropout → Dense(features) → Dropout

    Input ``x`` ``(batch, time, features)`` or ``(x, mask)`` (module docstring); output of the
    same form and shape. Params: ``norm_1`` and ``norm_2`` (`layer_norm`), ``attention``
    (`multi_head_attention`) and ``mlp`` (``{"dense_0", "gelu_1", "dropout_2", "dense_3",
    "dropout_4"}``). Dropout needs a key when ``train=True`` and ``dropout_rate > 0``.
    """
    if mlp_dim < 1:
        raise ValueError(f"transformer_block: mlp_dim must be positive, got {mlp_dim}")
    norm_1, norm_2 = layer_norm(eps=eps), layer_norm(eps=eps)
    attention = multi_head_attention(num_heads, head_dim=head_dim, causal=causal)
    attention_dropout = dropout(dropout_rate)

    def mlp(features):
        return serial(
            dense(mlp_dim), gelu, dropout(dropout_rate), dense(features), dropout(dropout_rate)
        )

    def init(key, in_shape):
        x_shape, mask_shape = _split_shape("transformer_block", in_shape)
        keys = jax.random.split(key, 4)
        params = {}
        for name, child, k in [
            ("norm_1", norm_1, keys[0]),
            ("attention", attention, keys[1]),
            ("norm_2", norm_2, keys[2]),
            ("mlp", mlp(x_shape[-1]), keys[3]),
        ]:
            with scope(name):
                _, params[name], _ = child.init(k, x_shape)
        return _out_shape(x_shape, mask_shape), params, {}

    def apply(params, state, inputs, *, key=None, train=False):
        x, mask = _split_input("transformer_block", inputs)
        attention_key, mlp_key = (None, None) if key is None else jax.random.split(key)
        with scope("norm_1"):
            h, _ = norm_1.apply(params["norm_1"], {}, x)
        with scope("attention"):
            h, _ = attention.apply(params["attention"], {}, h if mask is None else (h, mask))
            h = h if mask is None else h[0]
        with scope("dropout"):
            h, _ = attention_dropout.apply({}, {}, h, key=attention_key, train=train)
        x = x + h
        with scope("norm_2"):
            h, _ = norm_2.apply(params["norm_2"], {}, x)
        with scope("mlp"):
            h, _ = mlp(x.shape[-1]).apply(params["mlp"], {}, h, key=mlp_key, train=train)
        return _like_input(inputs, x + h, mask), state

    return Layer(init, apply, kind="transformer_block")
