"""Recurrent layers over sequences: GRU and LSTM, run with `lax.scan` over time.

Input ``(batch, time, features)``. Output ``(batch, time, hidden)`` with
``return_sequences=True`` (the hidden state after every step), ``(batch, hidden)`` with
``return_sequences=False`` (the last one). With ``bidirectional=True`` a second recurrence reads
the sequence backwards; its states are put back in time order and concatenated to the forward
ones on the feature axis (``2·hidden`` features), and its "last" state is the one after reading
the first element, as in PyTorch's ``h_n``. The state starts at zero.

Params, per direction, follow PyTorch with the kernels transposed to act on the right
(``x W``): ``w_ih`` ``(features, G·hidden)`` and ``w_hh`` ``(hidden, G·hidden)`` hold the G gate
blocks side by side. A bidirectional layer's params are ``{"forward": ..., "backward": ...}``.
By default each gate's input block is Glorot-uniform and its recurrent block orthogonal.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

from funcnet.nn import initializers
from funcnet.nn.core import Layer, check_floating, check_shape

__all__ = ["gru", "lstm"]

Array = jax.Array


def _recurrent(
    kind: str,
    hidden: int,
    *,
    gates: int,
    make_biases: Callable[[Array], dict[str, Array]],
    input_bias: Callable[[dict[str, Array]], Array],
    step: Callable[[dict[str, Array], Array, Array], tuple[Array, Array]],
    carry_size: int,
    return_sequences: bool,
    bidirectional: bool,
    w_init,
    u_init,
    dtype,
) -> Layer:
    """A layer running ``carry, h = step(params, carry, x_t W_ih + input_bias)`` over time.

    The input projection of all steps is one matmul before the scan; only the recurrent part
    runs inside it. The carry is ``carry_size`` states of width `hidden` side by side.
    """
    if hidden < 1:
        raise ValueError(f"{kind}: hidden must be positive, got {hidden}")
    w_init, u_init = initializers.get(w_init), initializers.get(u_init)
    directions = ("forward", "backward") if bidirectional else ("forward",)
    width = hidden * len(directions)

    def init_direction(key, features):
        keys = jax.random.split(key, 2 * gates + 1)
        w_ih = [w_init(k, (features, hidden), dtype) for k in keys[:gates]]
        w_hh = [u_init(k, (hidden, hidden), dtype) for k in keys[gates : 2 * gates]]
        params = {"w_ih": jnp.concatenate(w_ih, 1), "w_hh": jnp.concatenate(w_hh, 1)}
        return {**params, **make_biases(keys[-1])}

    def init(key, in_shape):
        in_shape = check_shape(
            kind, in_shape, "an input (batch, time, features)", min_rank=3, max_rank=3
        )
        per_direction = {
            d: init_direction(jax.random.fold_in(key, i), in_shape[-1])
            for i, d in enumerate(directions)
        }
        params = per_direction if bidirectional else per_direction["forward"]
        batch, time, _ = in_shape
        return ((batch, time, width) if return_sequences else (batch, width)), params, {}

    def run(params, xs, reverse):
        """One direction over time-major `xs` ``(time, batch, features)``."""
        projected = xs @ params["w_ih"] + input_bias(params)
        dtype = projected.dtype
        carry = jnp.zeros((xs.shape[1], carry_size * hidden), dtype)
        carry, hs = lax.scan(lambda c, p: step(params, c, p), carry, projected, reverse=reverse)
        return hs, carry[:, -hidden:]

    def apply(params, state, x, *, key=None, train=False):
        del key, train
        per_direction = params if bidirectional else {"forward": params}
        features = per_direction["forward"]["w_ih"].shape[0]
        expected = f"an input (batch, time, {features})"
        check_shape(kind, x.shape, expected, min_rank=3, max_rank=3, last=features)
        check_floating(kind, x)
        xs = jnp.swapaxes(x, 0, 1)
        outputs = [run(per_direction[d], xs, d == "backward") for d in directions]
        if return_sequences:
            y = jnp.concatenate([jnp.swapaxes(hs, 0, 1) for hs, _ in outputs], axis=-1)
        else:
            y = jnp.concatenate([last for _, last in outputs], axis=-1)
        return y, state

    return Layer(init, apply, kind=kind)


def gru(
    hidden: int,
    *,
    return_sequences: bool = True,
    bidirectional: bool = False,
    w_init: str | initializers.Initializer = "glorot_uniform",
    u_init: str | initializers.Initializer = "orthogonal",
    b_init: str | initializers.Initializer = "zeros",
    dtype=None,
) -> Layer:
    """Gated recurrent unit (Cho et al., 2014), with PyTorch's equations::

        r_t = σ(x_t W_ir + b_ir + h_{t−1} W_hr + b_hr)
        z_t = σ(x_t W_iz + b_iz + h_{t−1} W_hz + b_hz)
        n_t = tanh(x_t W_in + b_in + r_t ⊙ (h_{t−1} W_hn + b_hn))
        h_t = (1 − z_t) ⊙ n_t + z_t ⊙ h_{t−1},    h_0 = 0

    Input ``(batch, time, features)``; output ``(batch, time, hidden)`` (all states) or
    ``(batch, hidden)`` (the last) by `return_sequences`, with ``2·hidden`` features when
    `bidirectional` (see the module docstring). Params: ``w_ih`` ``(features, 3·hidden)``
    ``= [W_ir | W_iz | W_in]``, ``w_hh`` ``(hidden, 3·hidden)`` ``= [W_hr | W_hz | W_hn]``,
    ``b_ih`` and ``b_hh`` ``(3·hidden,)`` in the same gate order.
    """
    b_init = initializers.get(b_init)

    def make_biases(key):
        ih_key, hh_key = jax.random.split(key)
        return {
            "b_ih": b_init(ih_key, (3 * hidden,), dtype),
            "b_hh": b_init(hh_key, (3 * hidden,), dtype),
        }

    def step(params, h, projected):
        recurrent = h @ params["w_hh"] + params["b_hh"]
        i_r, i_z, i_n = jnp.split(projected, 3, axis=-1)
        h_r, h_z, h_n = jnp.split(recurrent, 3, axis=-1)
        r = jax.nn.sigmoid(i_r + h_r)
        z = jax.nn.sigmoid(i_z + h_z)
        n = jnp.tanh(i_n + r * h_n)
        h = (1 - z) * n + z * h
        return h, h

    return _recurrent(
        "gru",
        hidden,
        gates=3,
        make_biases=make_biases,
        input_bias=lambda params: params["b_ih"],
        step=step,
        carry_size=1,
        return_sequences=return_sequences,
        bidirectional=bidirectional,
        w_init=w_init,
        u_init=u_init,
        dtype=dtype,
    )


def lstm(
    hidden: int,
    *,
    return_sequences: bool = True,
    bidirectional: bool = False,
    forget_bias: float = 1.0,
    w_init: str | initializers.Initializer = "glorot_uniform",
    u_init: str | initializers.Initializer = "orthogonal",
    dtype=None,
) -> Layer:
    """Long short-term memory (Hochreiter & Schmidhuber, 1997), with PyTorch's equations::

        i_t = σ(x_t W_ii + h_{t−1} W_hi + b_i)        input gate
        f_t = σ(x_t W_if + h_{t−1} W_hf + b_f)        forget gate
        g_t = tanh(x_t W_ig + h_{t−1} W_hg + b_g)     candidate cell
        o_t = σ(x_t W_io + h_{t−1} W_ho + b_o)        output gate
        c_t = f_t ⊙ c_{t−1} + i_t ⊙ g_t,    h_t = o_t ⊙ tanh(c_t),    h_0 = c_0 = 0

    Input ``(batch, time, features)``; output the hidden states ``h_t``: ``(batch, time,
    hidden)`` or the last ``(batch, hidden)`` by `return_sequences`, ``2·hidden`` features when
    `bidirectional`. Params: ``w_ih`` ``(features, 4·hidden)`` ``= [W_ii | W_if | W_ig | W_io]``,
    ``w_hh`` ``(hidden, 4·hidden)`` likewise, and one bias ``b`` ``(4·hidden,)`` (PyTorch's
    ``b_ih + b_hh``), zero except ``b_f = forget_bias`` (1 by default, so that the cell starts
    by remembering; set 0 for PyTorch's initialisation).
    """

    def make_biases(key):
        del key
        b = jnp.zeros((4, hidden), dtype or jnp.result_type(float)).at[1].set(forget_bias)
        return {"b": b.reshape(-1)}

    def step(params, carry, projected):
        c, h = jnp.split(carry, 2, axis=-1)
        gates = projected + h @ params["w_hh"]
        i, f, g, o = jnp.split(gates, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return jnp.concatenate([c, h], axis=-1), h

    return _recurrent(
        "lstm",
        hidden,
        gates=4,
        make_biases=make_biases,
        input_bias=lambda params: params["b"],
        step=step,
        carry_size=2,
        return_sequences=return_sequences,
        bidirectional=bidirectional,
        w_init=w_init,
        u_init=u_init,
        dtype=dtype,
    )
