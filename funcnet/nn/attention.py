"""Multi-head self- and cross-attention, and the pre-norm transformer block.

Inputs and masks. The self-attention layers (`multi_head_attention`, `transformer_block`) take

- ``x`` of shape ``(batch, time, features)``;
- ``(x, mask)``, with a padding mask of shape ``(batch, time)``, boolean, True where a position
  holds a real token and False where it is padding;
- ``(x, mask, attention_mask)``, adding an arbitrary boolean attention mask of shape
  ``(batch or 1, heads or 1, q_time, k_time)``, True where query ``i`` may attend to key ``j``.
  ``mask`` may be None here when there is no padding.

`cross_attention` takes queries from ``x`` and keys and values from a second sequence
``context`` of shape ``(batch, k_time, context_features)``: ``(x, context)``,
``(x, context, context_mask)`` with the context's padding mask ``(batch, k_time)``, or
``(x, context, context_mask, attention_mask)``.

A query attends to key ``j`` only where every mask given allows it: the padding mask of the
keys, the attention mask, and, with ``causal=True``, ``j ≤ i``. Padded positions are never
attended to (as keys); their own outputs are computed but meaningless (a query that sees no
key at all, such as a padded first position under a causal mask, averages all values
uniformly). The output has the form of the input, with ``y`` of shape ``(batch, q_time,
features)`` in the place of ``x``: ``y`` for ``x``, ``(y, mask)`` for ``(x, mask)``,
``(y, context, context_mask)`` for ``(x, context, context_mask)`` and so on, so masked layers
stack in `serial`. `init` takes ``in_shape`` in the same form, with None for a missing mask.

Options of the attention layers:

- ``dropout_rate``: dropout on the attention weights (the probability of dropping one), in
  training only; it then needs a key.
- ``return_weights=True``: the output becomes ``(out, weights)``, ``out`` as above and
  ``weights`` the attention weights of shape ``(batch, heads, q_time, k_time)``, after
  dropout. The same params serve a layer built with and without it.
- ``cache_length`` (causal self-attention and `transformer_block`): step-by-step decoding with
  a cache of past keys and values, kept in the layer's ``state`` (see `multi_head_attention`).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

from funcnet._checks import check_float_dtype, check_int, check_probability
from funcnet._trees import is_shape
from funcnet.nn import initializers
from funcnet.nn.activations import gelu, softmax
from funcnet.nn.core import (
    Layer,
    LayerError,
    check_floating,
    check_param_shapes,
    check_params,
    check_shape,
    input_shape,
    scope,
    serial,
)
from funcnet.nn.dropout import dropout
from funcnet.nn.linear import dense
from funcnet.nn.norm import layer_norm

__all__ = ["cross_attention", "multi_head_attention", "transformer_block"]

Array = jax.Array

_SELF_FORM = "x, (x, mask) or (x, mask, attention_mask)"
_DROPPING_WEIGHT = "dropping an attention weight"
_CROSS_FORM = (
    "(x, context), (x, context, context_mask) or (x, context, context_mask, attention_mask)"
)


def _split_shape(kind: str, in_shape, *, cross: bool = False) -> list:
    """The parts of ``in_shape`` as a list ``[x_shape, …]`` of tuples or None, in input order."""
    form = _CROSS_FORM if cross else _SELF_FORM
    if is_shape(in_shape) and not cross:
        parts = [tuple(in_shape)]
    elif (
        isinstance(in_shape, (tuple, list))
        and 2 <= len(in_shape) <= (4 if cross else 3)
        and all(s is None or is_shape(s) for s in in_shape)
    ):
        parts = [None if s is None else tuple(s) for s in in_shape]
    else:
        raise LayerError(kind, f"expected the shapes of {form}, got {in_shape}")
    sequences = parts[:2] if cross else parts[:1]
    for name, shape in zip(["x", "context"], sequences, strict=False):
        if shape is None or len(shape) != 3:
            raise LayerError(
                kind,
                f"expected {name} of shape (batch, time, features) in {form}, got {in_shape}",
            )
        check_shape(kind, shape, f"{name} of shape (batch, time, features)")
    return parts


def _check_masks_shape(kind: str, parts: list, num_heads: int, *, cross: bool, k_time=None):
    """Checks the padding and attention mask shapes in `parts` (from `_split_shape`)."""
    x_shape = parts[0]
    keys = parts[1] if cross else x_shape
    if len(parts) > 1 + cross and parts[1 + cross] is not None:
        name = "context_mask" if cross else "mask"
        if parts[1 + cross] != keys[:2]:
            raise LayerError(
                kind,
                f"the {name} must have shape (batch, time) = {keys[:2]}, got {parts[1 + cross]}",
            )
    if len(parts) > 2 + cross and parts[2 + cross] is not None:
        _check_attention_mask(
            kind, parts[2 + cross], x_shape[0], num_heads, x_shape[1], k_time or keys[1]
        )


def _check_attention_mask(kind, shape, batch, num_heads, q_time, k_time):
    shape = None if shape is None else tuple(shape)
    if (
        shape is None
        or len(shape) != 4
        or shape[0] not in (1, batch)
        or shape[1] not in (1, num_heads)
        or shape[2:] != (q_time, k_time)
    ):
        raise LayerError(
            kind,
            f"the attention mask must have shape (batch or 1, heads or 1, q_time, k_time) = "
            f"({batch} or 1, {num_heads} or 1, {q_time}, {k_time}), got {shape}",
        )


def _split_input(kind: str, inputs, *, cross: bool = False) -> list:
    """The parts of `inputs` as a list ``[x, …]`` in input order, each checked."""
    form = _CROSS_FORM if cross else _SELF_FORM
    if isinstance(inputs, (tuple, list)):
        parts = list(inputs)
        if not (2 <= len(parts) <= (4 if cross else 3)):
            raise LayerError(kind, f"expected {form}, got {len(parts)} inputs")
    elif cross:
        raise LayerError(kind, f"expected {form}, got a single array")
    else:
        parts = [inputs]
    sequences = parts[:2] if cross else parts[:1]
    for name, z in zip(["x", "context"], sequences, strict=False):
        check_shape(
            kind,
            input_shape(kind, z, name),
            f"{name} of shape (batch, time, features)",
            min_rank=3,
            max_rank=3,
        )
        check_floating(kind, z)
    keys = parts[1] if cross else parts[0]
    if len(parts) > 1 + cross and parts[1 + cross] is not None:
        mask = parts[1 + cross]
        if mask.shape != keys.shape[:2] or mask.dtype != jnp.bool_:
            name = "context_mask" if cross else "mask"
            raise LayerError(
                kind,
                f"the {name} must be a bool array of shape (batch, time) = "
                f"{tuple(keys.shape[:2])}, True = keep; got {mask.dtype}{list(mask.shape)}",
            )
    if len(parts) > 2 + cross and parts[2 + cross] is not None:
        attention_mask = parts[2 + cross]
        if attention_mask.dtype != jnp.bool_:
            raise LayerError(
                kind,
                f"the attention mask must be a bool array, True = may attend; got "
                f"{attention_mask.dtype}{list(attention_mask.shape)}",
            )
    return parts


def _output(parts: list, y, weights=None):
    """``y`` in the place of ``x``: the output has the form of the input (shapes, in `init`);
    with `weights` (the attention weights, or their shape) the pair ``(output, weights)``."""
    out = y if len(parts) == 1 else (y, *parts[1:])
    return out if weights is None else (out, weights)


def _check_heads(kind: str, num_heads: int, head_dim: int | None) -> tuple[int, int | None]:
    """`num_heads` and `head_dim` (None: the width over the heads) as ints, once positive."""
    num_heads = check_int(kind, "num_heads", num_heads)
    return num_heads, None if head_dim is None else check_int(kind, "head_dim", head_dim)


def _init_projections(
    kind, key, features, context_features, num_heads, head_dim, w_init, b_init, dtype
):
    """Params ``q`` (features → H·d), ``k``, ``v`` (context_features → H·d), ``o`` (H·d →
    features)."""
    if head_dim is None and features % num_heads:
        raise LayerError(
            kind, f"{features} features do not split into {num_heads} heads; pass head_dim"
        )
    width = num_heads * (head_dim or features // num_heads)
    params = {}
    for i, (name, shape) in enumerate(
        [
            ("q", (features, width)),
            ("k", (context_features, width)),
            ("v", (context_features, width)),
            ("o", (width, features)),
        ]
    ):
        w_key, b_key = jax.random.split(jax.random.fold_in(key, i))
        params[name] = {"w": w_init(w_key, shape, dtype), "b": b_init(b_key, shape[1:], dtype)}
    return params


def _check_projections(
    kind: str, params, num_heads: int, head_dim: int | None, cross: bool
) -> tuple[int, int]:
    """The features of the queries and of the context (``q``'s and, with `cross`, ``k``'s
    kernel's), once the params are the four projections ``q``, ``k``, ``v``, ``o`` of init,
    each a dict holding ``w`` and ``b`` of init's shapes."""
    check_params(kind, params, "q", "k", "v", "o")
    for name in "qk":
        check_params(kind, params[name], "w", what=f"params[{name!r}]")
    features = (*jnp.shape(params["q"]["w"]), 0)[0]
    context = (*jnp.shape(params["k"]["w"]), 0)[0] if cross else features
    width = num_heads * (head_dim or features // num_heads)
    expected = {
        "q": {"w": (features, width), "b": (width,)},
        "k": {"w": (context, width), "b": (width,)},
        "v": {"w": (context, width), "b": (width,)},
        "o": {"w": (width, features), "b": (features,)},
    }
    why = f"for {features} features" + (f", {context} of the context" if cross else "")
    why += f" and {num_heads} heads of {width // num_heads}"
    check_param_shapes(kind, params, expected, why=why)
    return features, context


def _heads(params, name: str, z: Array, num_heads: int) -> Array:
    """``z W + b`` split into heads: ``(batch, time, ·) -> (batch, heads, time, d)``.

    The kernel ``(features, heads·d)`` is read as ``(features, heads, d)``, so the product
    writes the heads' axes itself. Read that way, XLA:CPU lays the kernel's gradient out as a
    plain ``(features, batch·time) · (batch·time, heads·d)`` product and runs it in its
    YNNPACK fusions; with the output reshaped instead, each kernel gradient was a product
    contracting both operands' other axis, left to the generic dot (docs/benchmarks.md, the
    transformer). The Kronecker, NTK and per-example tools read the kernel through the reshape.
    """
    w, b = params[name]["w"], params[name]["b"]
    heads = w.reshape(w.shape[0], num_heads, -1)
    h = lax.dot_general(z, heads, (((z.ndim - 1,), (0,)), ((), ())))  # (batch, time, heads, d)
    return (h + b.reshape(heads.shape[1:])).transpose(0, 2, 1, 3)


def _attend(kind, params, q, k, v, visible, rate, key, train) -> tuple[Array, Array]:
    """``(y, weights)``: softmax attention of `q` over `k`, `v` where `visible`, heads merged
    and projected by ``o``; `weights` after dropout of `rate` (with `key`, when `train`)."""
    num_heads, d = q.shape[1], q.shape[3]
    scores = jnp.einsum("bhid,bhjd->bhij", q, k) / math.sqrt(d)
    # A finite floor rather than -inf: a row with no visible key averages uniformly
    # instead of turning into NaN.
    scores = jnp.where(visible, scores, jnp.finfo(scores.dtype).min)
    # Half-precision scores: the max and the sum over keys in float32, weights rounded once.
    weights = softmax(scores, axis=-1)
    if train and rate > 0.0:
        if key is None:
            raise LayerError(
                kind,
                "train=True with dropout_rate > 0 drops attention weights at random and needs "
                "a key: apply(..., key=key, train=True); pass train=False to evaluate",
            )
        keep = jax.random.bernoulli(key, 1.0 - rate, weights.shape)
        weights = jnp.where(keep, weights / (1.0 - rate), jnp.zeros_like(weights))
    out = jnp.einsum("bhij,bhjd->bhid", weights, v)
    # The output kernel (heads·d, features) read as (heads, d, features), as in `_heads`.
    w = params["o"]["w"]
    merge = w.reshape(num_heads, d, w.shape[-1])
    y = lax.dot_general(out, merge, (((1, 3), (0, 1)), ((), ())))  # (batch, time, features)
    return y + params["o"]["b"], weights


def _visible(q_time, k_time, key_mask, attention_mask, q_start=None) -> Array:
    """Where query ``i`` may attend to key ``j``: ``(batch or 1, 1 or heads, q_time, k_time)``.

    `key_mask` ``(batch, k_time)`` or None; `attention_mask` or None; with `q_start` (causal),
    query ``i`` sits at position ``q_start + i`` and sees the keys ``j ≤ q_start + i``.
    """
    visible = jnp.ones((1, 1, q_time, k_time), bool)
    if key_mask is not None:
        visible = visible & key_mask[:, None, None, :]
    if attention_mask is not None:
        visible = visible & attention_mask
    if q_start is not None:
        visible = visible & (jnp.arange(k_time) <= q_start + jnp.arange(q_time)[:, None])
    return visible


def multi_head_attention(
    num_heads: int,
    *,
    head_dim: int | None = None,
    causal: bool = False,
    dropout_rate: float = 0.0,
    return_weights: bool = False,
    cache_length: int | None = None,
    w_init: str | initializers.Initializer = "glorot_uniform",
    b_init: str | initializers.Initializer = "zeros",
    dtype=None,
) -> Layer:
    """Multi-head scaled dot-product self-attention (Vaswani et al., 2017).

    For each head ``h`` with ``Q_h = x W_q,h + b_q,h`` (and likewise ``K_h``, ``V_h``), each of
    width ``d = head_dim``::

        A_h = Dropout(softmax(Q_h K_hᵀ / √d + M)),    y = [A_1 V_1 | ... | A_H V_H] W_o + b_o

    the softmax over keys, with ``M`` = −∞ at the keys a query may not see: padding (mask
    False), the attention mask False and, with ``causal=True``, later positions (``j > i``).

    Input ``x`` ``(batch, time, features)``, ``(x, mask)`` or ``(x, mask, attention_mask)``
    (module docstring); output of the same form, ``y`` of shape ``(batch, time, features)``,
    and with ``return_weights=True`` the pair ``(output, A)``, ``A`` of shape ``(batch, heads,
    time, k_time)``. `head_dim` defaults to ``features // num_heads``. Params ``q``, ``k``,
    ``v``, each ``{"w": (features, H·d), "b": (H·d,)}``, and ``o`` ``{"w": (H·d, features),
    "b": (features,)}``.

    `dropout_rate` drops attention weights in training, ``A ⊙ m / (1 − rate)`` with ``m =
    jax.random.bernoulli(key, 1 − rate, A.shape)`` from the layer's key, which is then
    required. ``train=False`` or ``rate = 0`` leaves ``A`` as it is.

    ``cache_length=N`` (needs ``causal=True``) runs the layer on successive chunks of one
    sequence — a prompt, then one token at a time — with the keys and values of the earlier
    chunks kept in ``state["cache"]``: ``{"k", "v"}`` of shape ``(batch, heads, N, d)``,
    ``"valid"`` ``(batch, N)`` (the padding mask of the cached positions) and ``"index"``, the
    number of positions filled (int32). `init` allocates it empty for the batch of
    ``in_shape``; each `apply` on ``x`` of shape ``(batch, t, features)`` writes positions
    ``index … index + t − 1``, attends causally over everything written, and returns the
    state with ``index + t``. Fed a sequence chunk by chunk it gives the outputs of one causal
    pass over the whole sequence, and with fixed chunk shapes the step compiles once. Here
    ``k_time = N``: an attention mask has shape ``(batch or 1, heads or 1, t, N)`` and
    returned weights ``(batch, heads, t, N)``. Writing past ``N`` raises an error when the
    index is concrete; under `jit` it cannot be checked and gives wrong outputs. Start a new
    sequence from the state of `init` (or with ``index`` set to 0).
    """
    kind = "multi_head_attention"
    num_heads, head_dim = _check_heads(kind, num_heads, head_dim)
    check_probability(kind, "dropout_rate", dropout_rate, of=_DROPPING_WEIGHT)
    if cache_length is not None:
        cache_length = check_int(kind, "cache_length", cache_length)
        if not causal:
            raise ValueError(
                f"{kind}: cache_length needs causal=True: decoding from a cache of past keys "
                "sees only the past"
            )
    w_init, b_init = initializers.named(kind, w_init=w_init, b_init=b_init)
    check_float_dtype(kind, dtype)

    def init(key, in_shape):
        parts = _split_shape(kind, in_shape)
        batch, time, features = parts[0]
        _check_masks_shape(kind, parts, num_heads, cross=False, k_time=cache_length)
        params = _init_projections(
            kind, key, features, features, num_heads, head_dim, w_init, b_init, dtype
        )
        state = {}
        if cache_length is not None:
            d = params["k"]["w"].shape[1] // num_heads
            zeros = jnp.zeros((batch, num_heads, cache_length, d), params["k"]["w"].dtype)
            state = {
                "cache": {
                    "k": zeros,
                    "v": zeros,
                    "valid": jnp.zeros((batch, cache_length), bool),
                    "index": jnp.zeros((), jnp.int32),
                }
            }
        weights_shape = (batch, num_heads, time, cache_length or time)
        return _output(parts, parts[0], weights_shape if return_weights else None), params, state

    def apply(params, state, inputs, *, key=None, train=False):
        parts = _split_input(kind, inputs)
        x = parts[0]
        mask = parts[1] if len(parts) > 1 else None
        attention_mask = parts[2] if len(parts) > 2 else None
        features, _ = _check_projections(kind, params, num_heads, head_dim, cross=False)
        check_shape(kind, x.shape, f"{features} features on the last axis", last=features)
        batch, time, _ = x.shape
        q, k, v = (_heads(params, name, x, num_heads) for name in "qkv")
        if cache_length is None:
            if attention_mask is not None:
                _check_attention_mask(kind, attention_mask.shape, batch, num_heads, time, time)
            visible = _visible(time, time, mask, attention_mask, 0 if causal else None)
        else:
            cache = state.get("cache") if isinstance(state, dict) else None
            if cache is None:
                raise LayerError(
                    kind,
                    f"built with cache_length={cache_length}, it needs the state made by its "
                    "init, which holds the cache",
                )
            check_params(kind, cache, "k", "v", "valid", "index", what="state['cache']")
            if attention_mask is not None:
                _check_attention_mask(
                    kind, attention_mask.shape, batch, num_heads, time, cache_length
                )
            if cache["k"].shape[0] != batch:
                raise LayerError(
                    kind,
                    f"the cache holds a batch of {cache['k'].shape[0]} sequences, got x of "
                    f"shape {tuple(x.shape)}",
                )
            index = cache["index"]
            if not isinstance(index, jax.core.Tracer) and int(index) + time > cache_length:
                raise LayerError(
                    kind,
                    f"the cache holds {cache_length} positions, {int(index)} are filled and "
                    f"{time} more do not fit",
                )
            new_mask = jnp.ones((batch, time), bool) if mask is None else mask
            cache = {
                "k": lax.dynamic_update_slice_in_dim(
                    cache["k"], k.astype(cache["k"].dtype), index, 2
                ),
                "v": lax.dynamic_update_slice_in_dim(
                    cache["v"], v.astype(cache["v"].dtype), index, 2
                ),
                "valid": lax.dynamic_update_slice_in_dim(cache["valid"], new_mask, index, 1),
                "index": index + time,
            }
            k, v = cache["k"], cache["v"]
            visible = _visible(time, cache_length, cache["valid"], attention_mask, index)
            state = {**state, "cache": cache}
        y, weights = _attend(kind, params, q, k, v, visible, dropout_rate, key, train)
        return _output(parts, y, weights if return_weights else None), state

    return Layer(init, apply, kind=kind)


def cross_attention(
    num_heads: int,
    *,
    head_dim: int | None = None,
    dropout_rate: float = 0.0,
    return_weights: bool = False,
    w_init: str | initializers.Initializer = "glorot_uniform",
    b_init: str | initializers.Initializer = "zeros",
    dtype=None,
) -> Layer:
    """Multi-head attention of the queries of one sequence over another (encoder-decoder)::

        Q_h = x W_q,h + b_q,h,    K_h = c W_k,h + b_k,h,    V_h = c W_v,h + b_v,h
        A_h = Dropout(softmax(Q_h K_hᵀ / √d + M)),    y = [A_1 V_1 | ... | A_H V_H] W_o + b_o

    with ``x`` the queries' sequence ``(batch, q_time, features)``, ``c`` the context
    ``(batch, k_time, context_features)``, and ``M`` = −∞ where the context is padding
    (context_mask False) or the attention mask is False.

    Input ``(x, context)``, ``(x, context, context_mask)`` or ``(x, context, context_mask,
    attention_mask)`` (module docstring); output the same tuple with ``y`` ``(batch, q_time,
    features)`` in the place of ``x``, and with ``return_weights=True`` the pair ``(output,
    A)``, ``A`` of shape ``(batch, heads, q_time, k_time)``. `head_dim` defaults to
    ``features // num_heads``. Params ``q`` ``{"w": (features, H·d), "b": (H·d,)}``, ``k`` and
    ``v`` ``{"w": (context_features, H·d), "b": (H·d,)}``, ``o`` ``{"w": (H·d, features),
    "b": (features,)}``. `dropout_rate` as in `multi_head_attention`.
    """
    kind = "cross_attention"
    num_heads, head_dim = _check_heads(kind, num_heads, head_dim)
    check_probability(kind, "dropout_rate", dropout_rate, of=_DROPPING_WEIGHT)
    w_init, b_init = initializers.named(kind, w_init=w_init, b_init=b_init)
    check_float_dtype(kind, dtype)

    def init(key, in_shape):
        parts = _split_shape(kind, in_shape, cross=True)
        (batch, q_time, features), context_shape = parts[0], parts[1]
        if context_shape[0] != batch:
            raise LayerError(
                kind,
                f"x and context must have one batch size, got shapes {parts[0]} and "
                f"{context_shape}",
            )
        _check_masks_shape(kind, parts, num_heads, cross=True)
        params = _init_projections(
            kind, key, features, context_shape[2], num_heads, head_dim, w_init, b_init, dtype
        )
        weights_shape = (batch, num_heads, q_time, context_shape[1])
        return _output(parts, parts[0], weights_shape if return_weights else None), params, {}

    def apply(params, state, inputs, *, key=None, train=False):
        parts = _split_input(kind, inputs, cross=True)
        x, context = parts[0], parts[1]
        context_mask = parts[2] if len(parts) > 2 else None
        attention_mask = parts[3] if len(parts) > 3 else None
        features, context_features = _check_projections(
            kind, params, num_heads, head_dim, cross=True
        )
        check_shape(kind, x.shape, f"x with {features} features on the last axis", last=features)
        check_shape(
            kind,
            context.shape,
            f"context with {context_features} features on the last axis",
            last=context_features,
        )
        (batch, q_time, _), k_time = x.shape, context.shape[1]
        if context.shape[0] != batch:
            raise LayerError(
                kind,
                f"x and context must have one batch size, got shapes {tuple(x.shape)} and "
                f"{tuple(context.shape)}",
            )
        if attention_mask is not None:
            _check_attention_mask(kind, attention_mask.shape, batch, num_heads, q_time, k_time)
        q = _heads(params, "q", x, num_heads)
        k, v = _heads(params, "k", context, num_heads), _heads(params, "v", context, num_heads)
        visible = _visible(q_time, k_time, context_mask, attention_mask)
        y, weights = _attend(kind, params, q, k, v, visible, dropout_rate, key, train)
        return _output(parts, y, weights if return_weights else None), state

    return Layer(init, apply, kind=kind)


def transformer_block(
    num_heads: int,
    mlp_dim: int,
    *,
    dropout_rate: float = 0.0,
    attention_dropout_rate: float = 0.0,
    causal: bool = False,
    cache_length: int | None = None,
    head_dim: int | None = None,
    eps: float = 1e-5,
) -> Layer:
    """A pre-norm transformer block (as in GPT-2 and ViT)::

        h = x + Dropout(MHA(LN₁(x)))
        y = h + MLP(LN₂(h)),    MLP = Dense(mlp_dim) → GELU → Dropout → Dense(features) → Dropout

    Input ``x`` ``(batch, time, features)``, ``(x, mask)`` or ``(x, mask, attention_mask)``
    (module docstring); output of the same form and shape. Params: ``norm_1`` and ``norm_2``
    (`layer_norm`), ``attention`` (`multi_head_attention`) and ``mlp`` (``{"dense_0",
    "gelu_1", "dropout_2", "dense_3", "dropout_4"}``). `dropout_rate` is the rate of the
    dropouts above, `attention_dropout_rate` that of the attention weights inside MHA; either
    needs a key when ``train=True`` and it is positive.

    ``cache_length=N`` (needs ``causal=True``) gives the attention a cache of past keys and
    values, ``state["attention"]["cache"]`` (see `multi_head_attention`), for decoding one
    chunk at a time; the params are those of the block without it. The state is ``{}``
    otherwise.
    """
    num_heads = check_int("transformer_block", "num_heads", num_heads)
    mlp_dim = check_int("transformer_block", "mlp_dim", mlp_dim)
    check_probability("transformer_block", "dropout_rate", dropout_rate, of="dropping a unit")
    check_probability(
        "transformer_block", "attention_dropout_rate", attention_dropout_rate, of=_DROPPING_WEIGHT
    )
    norm_1, norm_2 = layer_norm(eps=eps), layer_norm(eps=eps)
    attention = multi_head_attention(
        num_heads,
        head_dim=head_dim,
        causal=causal,
        dropout_rate=attention_dropout_rate,
        cache_length=cache_length,
    )
    attention_dropout = dropout(dropout_rate)

    def mlp(features):
        return serial(
            dense(mlp_dim), gelu, dropout(dropout_rate), dense(features), dropout(dropout_rate)
        )

    def init(key, in_shape):
        parts = _split_shape("transformer_block", in_shape)
        _check_masks_shape("transformer_block", parts, num_heads, cross=False, k_time=cache_length)
        x_shape = parts[0]
        keys = jax.random.split(key, 4)
        params, state = {}, {}
        for name, child, k in [
            ("norm_1", norm_1, keys[0]),
            ("attention", attention, keys[1]),
            ("norm_2", norm_2, keys[2]),
            ("mlp", mlp(x_shape[-1]), keys[3]),
        ]:
            with scope(name):
                _, params[name], child_state = child.init(k, x_shape)
            if child_state:
                state[name] = child_state
        return _output(parts, x_shape), params, state

    def apply(params, state, inputs, *, key=None, train=False):
        check_params("transformer_block", params, "norm_1", "attention", "norm_2", "mlp")
        parts = _split_input("transformer_block", inputs)
        x = parts[0]
        attention_key, mlp_key = (None, None) if key is None else jax.random.split(key)
        # The attention weights' key is derived only when that dropout is on; the keys of the
        # other dropouts do not depend on attention_dropout_rate.
        weights_key = None
        if attention_key is not None and attention_dropout_rate > 0.0:
            weights_key = jax.random.fold_in(attention_key, 1)
        with scope("norm_1"):
            h, _ = norm_1.apply(params["norm_1"], {}, x)
        with scope("attention"):
            attention_state = state.get("attention", {}) if isinstance(state, dict) else {}
            h, attention_state = attention.apply(
                params["attention"],
                attention_state,
                h if len(parts) == 1 else (h, *parts[1:]),
                key=weights_key,
                train=train,
            )
            h = h if len(parts) == 1 else h[0]
        with scope("dropout"):
            h, _ = attention_dropout.apply({}, {}, h, key=attention_key, train=train)
        x = x + h
        with scope("norm_2"):
            h, _ = norm_2.apply(params["norm_2"], {}, x)
        with scope("mlp"):
            h, _ = mlp(x.shape[-1]).apply(params["mlp"], {}, h, key=mlp_key, train=train)
        new_state = {**state, "attention": attention_state} if attention_state else state
        return _output(parts, x + h), new_state

    return Layer(init, apply, kind="transformer_block")
