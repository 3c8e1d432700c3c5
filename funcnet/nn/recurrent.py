"""Recurrent layers over sequences: GRU and LSTM, run with `lax.scan` over time.

Input ``x`` of shape ``(batch, time, features)``, or a tuple ``(x, mask)`` or
``(x, mask, initial_state)`` (either of the last two may be None):

- ``mask``, bool ``(batch, time)``, True at a real step and False at padding (a prefix of True
  per sequence, as in a padded batch). A padded step leaves the state unchanged and outputs
  zeros, so the final state is the one after each sequence's last real step, and the backward
  direction reads each sequence in reverse within its own length (PyTorch's
  ``pack_padded_sequence`` and ``pad_packed_sequence`` give the same). A sequence without any
  real step keeps its initial state.
- ``initial_state``: the states the recurrences start from, zero when not given. For the GRU
  ``h0`` ``(batch, num_layers·directions, hidden)``; for the LSTM the pair ``(h0, c0)``, each of
  that shape. Entry ``l·directions + d`` belongs to layer ``l``, direction ``d`` (0 forward,
  1 backward): PyTorch's ``h_0`` with the batch axis moved first, ``jnp.swapaxes(h_0, 0, 1)``.

Output ``y``: ``(batch, time, directions·hidden)`` with ``return_sequences=True`` (the last
layer's hidden state after every step), ``(batch, directions·hidden)`` with
``return_sequences=False`` (its final states). With ``bidirectional=True`` a second recurrence
reads the sequence backwards; its states are put back in time order and concatenated after the
forward ones on the feature axis, and its final state is the one after reading the first
element, as in PyTorch's ``h_n``. Given a mask, the sequence output is the pair ``(y, mask)``,
so masked layers stack in `serial`. With ``return_state=True`` the output is
``(output, final_state)``, ``final_state`` in the form and shape of ``initial_state``, so a long
sequence can be run in chunks, each starting from the state the previous one ended in.

``unroll`` is the number of time steps each iteration of the scan's loop takes (`lax.scan`'s
``unroll``; the results are the same). None lets the layer choose: 4 on the CPU when a step's
products are small but not tiny (``2²⁰ ≤ batch·(features + hidden)·G·hidden ≤ 2²⁴``
multiply-adds, G the gates) and the sequence has 8 steps or more, 1 otherwise.

``num_layers = L > 1`` stacks recurrences: layer ``l + 1`` reads the outputs of layer ``l``
(both directions concatenated). With ``dropout = p > 0`` and ``train=True`` those inputs go
through inverted dropout, ``m ⊙ y / (1 − p)`` with ``m ~ Bernoulli(1 − p)`` drawn per element
of the batch-major ``(batch, time, directions·hidden)`` output from ``fold_in(key, l)``; there
is none after the last layer, and training needs a key.

Params of one layer, per direction, follow PyTorch with the kernels transposed to act on the
right (``x W``): ``w_ih`` ``(features, G·hidden)`` and ``w_hh`` ``(hidden, G·hidden)`` hold the G
gate blocks side by side. A bidirectional layer's params are ``{"forward": ..., "backward":
...}``. A stack's params are ``{"layer_0": ..., "layer_1": ...}``, each a layer's params; layer
``l > 0`` reads ``directions·hidden`` features. By default each gate's input block is
Glorot-uniform and its recurrent block orthogonal.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.ad_checkpoint import checkpoint_name

from funcnet._checks import check_float_dtype, check_int, check_probability, is_real
from funcnet.nn import initializers
from funcnet.nn.core import (
    Layer,
    LayerError,
    check_floating,
    check_param_shapes,
    check_params,
    check_shape,
    input_shape,
)

__all__ = ["gru", "lstm"]

Array = jax.Array

_INPUT_FORMS = "x, (x, mask) or (x, mask, initial_state)"
# The name the cells give their gates' pre-activations: the only values of a step kept for
# the backward pass (`_recurrent`).
_SAVED = "recurrent_preactivations"
_SAVE_PREACTIVATIONS = jax.checkpoint_policies.save_only_these_names(_SAVED)


def _unroll_for(xs_shape: tuple[int, ...], w_hh_shape: tuple[int, ...]) -> int:
    """The scan's steps per loop iteration when the layer leaves it to funcnet: 4 on the CPU
    when a step's two products take ``2²⁰ ≤ B·(F + H)·G·H ≤ 2²⁴`` multiply-adds, over at least
    8 steps; else 1. Measured on XLA:CPU (`_recurrent`'s docstring): the loop's per-iteration
    cost weighs on small steps, larger ones ran slower unrolled, and on tiny ones the
    unrolled loop's compile time (2–3 times the rolled one's) outweighs what it saves."""
    time, batch, features = xs_shape
    hidden, gates_hidden = w_hh_shape
    small = 2**20 <= batch * (features + hidden) * gates_hidden <= 2**24
    return 4 if jax.default_backend() == "cpu" and small and time >= 8 else 1


def _recurrent(
    kind: str,
    hidden: int,
    *,
    gates: int,
    make_biases: Callable[[Array], dict[str, Array]],
    biases: tuple[str, ...],
    input_bias: Callable[[dict[str, Array]], Array],
    step: Callable[[dict[str, Array], tuple[Array, ...], Array], tuple[tuple[Array, ...], Array]],
    carry_size: int,
    num_layers: int,
    dropout: float,
    return_sequences: bool,
    return_state: bool,
    bidirectional: bool,
    w_init,
    u_init,
    dtype,
    unroll: int | None,
) -> Layer:
    """A stack of layers running ``carry, h = step(cell, carry, projected_t)`` over time.

    ``projected_t = x_t W_ih + input_bias`` ``(batch, G·hidden)``, `cell` the params and the
    states ``(batch, hidden)``; the carry is a tuple of ``carry_size`` states, the hidden state
    last (the LSTM's is ``(c, h)``). `step` marks with ``checkpoint_name(·, _SAVED)`` the
    gates' pre-activations, and the scan body runs under `jax.checkpoint` saving only those:
    the backward pass recomputes the gates' sigmoids and tanhs from them instead of keeping
    every nonlinearity and its derivative for each step.

    Measured on XLA:CPU for a training step (value_and_grad, batch 32, 64 steps, 64 features,
    hidden 256, interleaved medians), the LSTM:

    - The input projection is taken inside each time step, as the recurrent one is. Taken for
      all steps as one matmul before the scan, it keeps a ``(time, batch, G·hidden)`` array and
      its gradient alive for the backward pass: twice the temporary memory (50 vs 25 MB) and
      as fast or slower (1.0–1.5×) at every shape tried, from batch 8 × 256 steps to batch
      256 × 32 steps, hidden 128 to 512.
    - Saving only the pre-activations: 14.1 MB of temporaries against 26.7 MB, and 39.5
      against 41.0 ms (the recomputed nonlinearities cost less than the saved arrays' traffic);
      for the GRU (the r and z sums and the candidate's two terms) 11.7 against 20.0 MB, at
      the same time (28.6 against 29.1 ms).
    - Batch-major, with the carry as a tuple: 41.0 ms against 44.8 ms for the same step run
      feature-major, ``(G·hidden, batch)`` gates split along their first axis with both kernels
      transposed once per call, and as fast or faster at every shape tried (batch 8 × 256
      steps: 68.8 against 107.2 ms; hidden 512: 137 against 206 ms). A carry kept as one
      ``[c; h]`` array, split and concatenated at every step, cost 60.1 against 53.9 ms.
    - Four steps per loop iteration (`_unroll_for`): 35.0 against 40.2 ms (LSTM) and 25.1
      against 28.7 ms (GRU) at this shape, 60.3 against 67.4 and 40.8 against 49.9 ms at batch
      8 × 256 steps, 21.9 against 24.3 and 17.9 against 18.9 ms at batch 128 × 32 steps,
      hidden 128; slower at hidden 512 (137 against 121 ms, 96.6 against 83.2), where the
      products are 2.3 times the rule's bound. Unrolled, the loop keeps more temporaries
      (LSTM 18.0 against 14.1 MB here) and compiles 2–3 times slower (a gradient of an LSTM
      of hidden 5 over 11 steps: 1.05 against 0.35 s), so tiny steps stay rolled.
    """
    hidden = check_int(kind, "hidden", hidden)
    num_layers = check_int(kind, "num_layers", num_layers)
    if unroll is not None:
        unroll = check_int(kind, "unroll", unroll)
    check_probability(kind, "dropout", dropout, of="dropping a unit between layers")
    if dropout > 0 and num_layers == 1:
        warnings.warn(
            f"{kind}: dropout acts between stacked layers and has no effect with num_layers=1",
            stacklevel=3,
        )
    w_init, u_init = initializers.named(kind, w_init=w_init, u_init=u_init)
    check_float_dtype(kind, dtype)
    directions = ("forward", "backward") if bidirectional else ("forward",)
    width = hidden * len(directions)
    state_what = "h0" if carry_size == 1 else "a pair (h0, c0), each"

    def state_shape_of(batch):
        return (batch, num_layers * len(directions), hidden)

    def init_direction(key, features):
        keys = jax.random.split(key, 2 * gates + 1)
        w_ih = [w_init(k, (features, hidden), dtype) for k in keys[:gates]]
        w_hh = [u_init(k, (hidden, hidden), dtype) for k in keys[gates : 2 * gates]]
        params = {"w_ih": jnp.concatenate(w_ih, 1), "w_hh": jnp.concatenate(w_hh, 1)}
        return {**params, **make_biases(keys[-1])}

    def init_layer(key, features):
        per_direction = {
            d: init_direction(jax.random.fold_in(key, i), features)
            for i, d in enumerate(directions)
        }
        return per_direction if bidirectional else per_direction["forward"]

    def split_shape(in_shape):
        """``(x_shape, mask_shape, state_shape)`` from any of the input forms' shapes."""
        in_shape = tuple(in_shape)
        mask_shape = state_shape = None
        if in_shape and isinstance(in_shape[0], (tuple, list)):
            if len(in_shape) not in (2, 3):
                raise LayerError(kind, f"expected {_INPUT_FORMS}, got {len(in_shape)} inputs")
            x_shape, mask_shape, state_shape = (*in_shape, None)[:3]
        else:
            x_shape = in_shape
        x_shape = check_shape(
            kind, x_shape, "an input (batch, time, features)", min_rank=3, max_rank=3
        )
        if mask_shape is not None and tuple(mask_shape) != x_shape[:2]:
            raise LayerError(
                kind, f"the mask must have shape (batch, time) = {x_shape[:2]}, got {mask_shape}"
            )
        if state_shape is not None:
            expected = state_shape_of(x_shape[0])
            expected = expected if carry_size == 1 else (expected, expected)
            try:
                shapes = tuple(state_shape) if carry_size == 1 else tuple(map(tuple, state_shape))
            except TypeError:
                shapes = None
            if shapes != expected:
                raise LayerError(
                    kind,
                    f"the initial state must be {state_what} of shape (batch, "
                    f"num_layers·directions, hidden) = {state_shape_of(x_shape[0])}, got "
                    f"{state_shape}",
                )
        return x_shape, mask_shape, state_shape

    def out_shape(x_shape, mask_shape):
        batch, time, _ = x_shape
        y_shape = (batch, time, width) if return_sequences else (batch, width)
        if mask_shape is not None and return_sequences:
            y_shape = (y_shape, tuple(mask_shape))
        if not return_state:
            return y_shape
        state = state_shape_of(batch)
        return y_shape, (state if carry_size == 1 else (state, state))

    def init(key, in_shape):
        x_shape, mask_shape, _ = split_shape(in_shape)
        if num_layers == 1:
            params = init_layer(key, x_shape[-1])
        else:
            keys = jax.random.split(key, num_layers)
            params = {
                f"layer_{i}": init_layer(keys[i], x_shape[-1] if i == 0 else width)
                for i in range(num_layers)
            }
        return out_shape(x_shape, mask_shape), params, {}

    def split_input(inputs, features):
        """``(x, mask, initial_state)``, checked; absent parts are None."""
        mask = initial = None
        if isinstance(inputs, (tuple, list)):
            if len(inputs) not in (2, 3):
                raise LayerError(kind, f"expected {_INPUT_FORMS}, got {len(inputs)} inputs")
            x, mask, initial = (*inputs, None)[:3]
        else:
            x = inputs
        expected = f"an input (batch, time, {features})"
        check_shape(kind, input_shape(kind, x), expected, min_rank=3, max_rank=3, last=features)
        check_floating(kind, x)
        batch, time, _ = x.shape
        if mask is not None and (mask.shape != (batch, time) or mask.dtype != jnp.bool_):
            raise LayerError(
                kind,
                f"the mask must be a bool array of shape (batch, time) = {(batch, time)}, "
                f"True at real steps; got {mask.dtype}{list(mask.shape)}",
            )
        if initial is not None:
            states = (initial,) if carry_size == 1 else initial
            expected = state_shape_of(batch)
            if (
                carry_size > 1
                and not (isinstance(initial, (tuple, list)) and len(initial) == carry_size)
            ) or any(getattr(s, "shape", None) != expected for s in states):
                got = jax.tree.map(lambda s: getattr(s, "shape", type(s).__name__), initial)
                raise LayerError(
                    kind,
                    f"the initial state must be {state_what} of shape (batch, "
                    f"num_layers·directions, hidden) = {expected}, got {got}",
                )
            for s in states:
                check_floating(kind, s)
        return x, mask, initial

    def run(params, xs, mask, carry, reverse):
        """One direction over time-major `xs` ``(time, batch, features)`` from `carry`, its
        states ``(batch, hidden)``: the states ``(time, batch, hidden)`` and the last carry."""
        bias = input_bias(params)

        def cell_step(c, x_t):
            return step(params, c, x_t @ params["w_ih"] + bias)

        if mask is None:
            scan_step, sequence = cell_step, xs
        else:

            def scan_step(c, inputs):
                x_t, real = inputs
                new_c, h = cell_step(c, x_t)
                kept = tuple(jnp.where(real, new, old) for new, old in zip(new_c, c, strict=True))
                return kept, jnp.where(real, h, jnp.zeros_like(h))

            sequence = (xs, mask[..., None])  # mask (time, batch, 1)
        scan_step = jax.checkpoint(scan_step, policy=_SAVE_PREACTIVATIONS)
        dtype = jnp.result_type(xs.dtype, params["w_ih"].dtype)
        carry = tuple(state.astype(dtype) for state in carry)
        steps = unroll or _unroll_for(xs.shape, params["w_hh"].shape)
        carry, hs = lax.scan(scan_step, carry, sequence, reverse=reverse, unroll=steps)
        return hs, carry

    # Compiled once per layer and shapes: called eagerly, a scan is traced and compiled anew
    # at each call (its body is a new closure), 60–100 ms for a small GRU; inside a jit the
    # call is inlined.
    run = jax.jit(run, static_argnums=4)

    def checked_layers(params):
        """Each layer's params and the input's features, once the params and those of each
        direction hold what init made, of its shapes: ``w_ih`` ``(features, G·hidden)``,
        ``w_hh`` ``(hidden, G·hidden)`` and the biases ``(G·hidden,)``, the features of the
        first layer those of its (forward) ``w_ih``."""
        if num_layers == 1:
            layers = {"params": params}
        else:
            check_params(kind, params, *(f"layer_{i}" for i in range(num_layers)))
            layers = {f"params['layer_{i}']": params[f"layer_{i}"] for i in range(num_layers)}
        for i, (where, layer_params) in enumerate(layers.items()):
            if bidirectional:
                check_params(kind, layer_params, *directions, what=where)
                cells = {f"{where}[{d!r}]": layer_params[d] for d in directions}
            else:
                cells = {where: layer_params}
            first_where, first = next(iter(cells.items()))
            check_params(kind, first, "w_ih", what=first_where)
            features = (*jnp.shape(first["w_ih"]), None)[0] if i == 0 else width
            expected = {"w_ih": (features, gates * hidden), "w_hh": (hidden, gates * hidden)}
            expected |= {name: (gates * hidden,) for name in biases}
            why = f"for {features} input features and hidden={hidden}"
            for cell_where, cell in cells.items():
                check_param_shapes(kind, cell, expected, why=why, what=cell_where)
            if i == 0:
                in_features = features
        return list(layers.values()), in_features

    def apply(params, state, x, *, key=None, train=False):
        layers, features = checked_layers(params)
        x, mask, initial = split_input(x, features)
        drop = train and dropout > 0 and num_layers > 1
        if drop and key is None:
            raise LayerError(
                kind,
                f"train=True with dropout={dropout} between layers draws random masks and "
                "needs a key: apply(..., key=key, train=True); pass train=False to evaluate",
            )
        batch = x.shape[0]
        if initial is None:
            zeros = jnp.zeros(state_shape_of(batch), x.dtype)
            initial = zeros if carry_size == 1 else (zeros, zeros)
        # The states of every recurrence, (c, h) for the LSTM: each (batch, num_layers·D, hidden).
        states = (initial,) if carry_size == 1 else tuple(initial[::-1])
        xs = jnp.swapaxes(x, 0, 1)
        mask_tm = None if mask is None else mask.T
        finals = []
        for i, layer_params in enumerate(layers):
            per_direction = layer_params if bidirectional else {"forward": layer_params}
            outputs = []
            for j, d in enumerate(directions):
                carry = tuple(s[:, i * len(directions) + j] for s in states)
                hs, carry = run(per_direction[d], xs, mask_tm, carry, d == "backward")
                outputs.append(hs)
                finals.append(carry)
            xs = jnp.concatenate(outputs, axis=-1)
            if drop and i < num_layers - 1:
                keep_shape = (xs.shape[1], xs.shape[0], xs.shape[2])
                keep = jax.random.bernoulli(jax.random.fold_in(key, i), 1.0 - dropout, keep_shape)
                xs = jnp.where(keep.swapaxes(0, 1), xs / (1.0 - dropout), jnp.zeros_like(xs))
        # Each state's finals: (batch, num_layers·D, hidden); the hidden state last.
        final = [jnp.stack([f[k] for f in finals], axis=1) for k in range(carry_size)]
        if return_sequences:
            y = jnp.swapaxes(xs, 0, 1)
        else:
            y = final[-1][:, -len(directions) :].reshape(batch, width)
        if mask is not None and return_sequences:
            y = (y, mask)
        if not return_state:
            return y, state
        final_state = final[0] if carry_size == 1 else (final[1], final[0])
        return (y, final_state), state

    return Layer(init, apply, kind=kind)


def gru(
    hidden: int,
    *,
    num_layers: int = 1,
    dropout: float = 0.0,
    return_sequences: bool = True,
    return_state: bool = False,
    bidirectional: bool = False,
    w_init: str | initializers.Initializer = "glorot_uniform",
    u_init: str | initializers.Initializer = "orthogonal",
    b_init: str | initializers.Initializer = "zeros",
    dtype=None,
    unroll: int | None = None,
) -> Layer:
    """Gated recurrent unit (Cho et al., 2014), with PyTorch's equations::

        r_t = σ(x_t W_ir + b_ir + h_{t−1} W_hr + b_hr)
        z_t = σ(x_t W_iz + b_iz + h_{t−1} W_hz + b_hz)
        n_t = tanh(x_t W_in + b_in + r_t ⊙ (h_{t−1} W_hn + b_hn))
        h_t = (1 − z_t) ⊙ n_t + z_t ⊙ h_{t−1},    h_0 given or 0

    Input ``(batch, time, features)``, or ``(x, mask)`` / ``(x, mask, h0)`` with ``h0``
    ``(batch, num_layers·directions, hidden)``; output ``(batch, time, hidden)`` (all states)
    or ``(batch, hidden)`` (the last) by `return_sequences`, ``2·hidden`` features when
    `bidirectional`, ``(output, h_n)`` with `return_state` (see the module docstring). Params
    of one layer and direction: ``w_ih`` ``(features, 3·hidden)`` ``= [W_ir | W_iz | W_in]``,
    ``w_hh`` ``(hidden, 3·hidden)`` ``= [W_hr | W_hz | W_hn]``, ``b_ih`` and ``b_hh``
    ``(3·hidden,)`` in the same gate order; ``num_layers > 1`` nests them under
    ``"layer_0"``, ``"layer_1"``, ..., with `dropout` between layers in training. `unroll`:
    time steps per iteration of the scan's loop, None to let the layer choose (module
    docstring).
    """
    (b_init,) = initializers.named("gru", b_init=b_init)

    def make_biases(key):
        ih_key, hh_key = jax.random.split(key)
        return {
            "b_ih": b_init(ih_key, (3 * hidden,), dtype),
            "b_hh": b_init(hh_key, (3 * hidden,), dtype),
        }

    def step(params, carry, projected):
        (h,) = carry
        recurrent = h @ params["w_hh"] + params["b_hh"]
        i_rz, i_n = jnp.split(projected, [2 * hidden], axis=-1)
        h_rz, h_n = jnp.split(recurrent, [2 * hidden], axis=-1)
        rz = checkpoint_name(i_rz + h_rz, _SAVED)
        i_n, h_n = checkpoint_name(i_n, _SAVED), checkpoint_name(h_n, _SAVED)
        r, z = jnp.split(jax.nn.sigmoid(rz), 2, axis=-1)
        n = jnp.tanh(i_n + r * h_n)
        h = (1 - z) * n + z * h
        return (h,), h

    return _recurrent(
        "gru",
        hidden,
        gates=3,
        make_biases=make_biases,
        biases=("b_ih", "b_hh"),
        input_bias=lambda params: params["b_ih"],
        step=step,
        carry_size=1,
        num_layers=num_layers,
        dropout=dropout,
        return_sequences=return_sequences,
        return_state=return_state,
        bidirectional=bidirectional,
        w_init=w_init,
        u_init=u_init,
        dtype=dtype,
        unroll=unroll,
    )


def lstm(
    hidden: int,
    *,
    num_layers: int = 1,
    dropout: float = 0.0,
    return_sequences: bool = True,
    return_state: bool = False,
    bidirectional: bool = False,
    forget_bias: float = 1.0,
    w_init: str | initializers.Initializer = "glorot_uniform",
    u_init: str | initializers.Initializer = "orthogonal",
    dtype=None,
    unroll: int | None = None,
) -> Layer:
    """Long short-term memory (Hochreiter & Schmidhuber, 1997), with PyTorch's equations::

        i_t = σ(x_t W_ii + h_{t−1} W_hi + b_i)        input gate
        f_t = σ(x_t W_if + h_{t−1} W_hf + b_f)        forget gate
        g_t = tanh(x_t W_ig + h_{t−1} W_hg + b_g)     candidate cell
        o_t = σ(x_t W_io + h_{t−1} W_ho + b_o)        output gate
        c_t = f_t ⊙ c_{t−1} + i_t ⊙ g_t,    h_t = o_t ⊙ tanh(c_t),    h_0, c_0 given or 0

    Input ``(batch, time, features)``, or ``(x, mask)`` / ``(x, mask, (h0, c0))`` with ``h0``
    and ``c0`` ``(batch, num_layers·directions, hidden)``; output the hidden states ``h_t``:
    ``(batch, time, hidden)`` or the last ``(batch, hidden)`` by `return_sequences`,
    ``2·hidden`` features when `bidirectional`, ``(output, (h_n, c_n))`` with `return_state`
    (see the module docstring). Params of one layer and direction: ``w_ih`` ``(features,
    4·hidden)`` ``= [W_ii | W_if | W_ig | W_io]``, ``w_hh`` ``(hidden, 4·hidden)`` likewise, and
    one bias ``b`` ``(4·hidden,)`` (PyTorch's ``b_ih + b_hh``), zero except ``b_f =
    forget_bias`` (1 by default, so that the cell starts by remembering; set 0 for PyTorch's
    initialisation); ``num_layers > 1`` nests them under ``"layer_0"``, ``"layer_1"``, ...,
    with `dropout` between layers in training. `unroll`: time steps per iteration of the
    scan's loop, None to let the layer choose (module docstring).
    """
    if not is_real(forget_bias) or not math.isfinite(forget_bias):
        raise ValueError(f"lstm: forget_bias must be a finite number, got {forget_bias!r:.40}")

    def make_biases(key):
        del key
        b = jnp.zeros((4, hidden), dtype or jnp.result_type(float)).at[1].set(forget_bias)
        return {"b": b.reshape(-1)}

    def step(cell, carry, projected):
        c, h = carry
        gates = checkpoint_name(projected + h @ cell["w_hh"], _SAVED)
        i, f, g, o = jnp.split(gates, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (c, h), h

    return _recurrent(
        "lstm",
        hidden,
        gates=4,
        make_biases=make_biases,
        biases=("b",),
        input_bias=lambda params: params["b"],
        step=step,
        carry_size=2,
        num_layers=num_layers,
        dropout=dropout,
        return_sequences=return_sequences,
        return_state=return_state,
        bidirectional=bidirectional,
        w_init=w_init,
        u_init=u_init,
        dtype=dtype,
        unroll=unroll,
    )
