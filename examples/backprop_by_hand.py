"""Backpropagation by hand: one sigmoid neuron with its numbers, then an N-layer network.

1. The neuron f(w, x) = σ(w₀x₀ + w₁x₁ + w₂) with σ(z) = 1/(1 + e^{−z}), at w = (2, −3, −3),
   x = (−1, −2). The forward pass evaluates the computational graph node by node
   (a = w₀x₀ = −2, b = w₁x₁ = 6, s = a + b = 4, z = s + w₂ = 1, f = σ(z) = 0.73); the backward
   pass starts from ∂f/∂f = 1 and multiplies by one local gradient per node:

       ∂f/∂z = σ(z)(1 − σ(z)) = 0.20,    ∂f/∂s = ∂f/∂w₂ = ∂f/∂z       (a sum passes it on)
       ∂f/∂w₀ = x₀·∂f/∂a = −0.20,       ∂f/∂x₀ = w₀·∂f/∂a = 0.39     (a product swaps inputs)
       ∂f/∂w₁ = x₁·∂f/∂b = −0.39,       ∂f/∂x₁ = w₁·∂f/∂b = −0.59

   The same σ′ is also traced through σ's own elementary nodes (−z, exp, 1 + ·, 1/·), and the
   gradient is checked against `jax.grad` and against `jax.vjp` with cotangent 1.0: reverse mode
   is exactly this vector–Jacobian product, pulled back from the output.

2. An N-layer network, N − 1 hidden layers h_l = act(z_l), z_l = h_{l−1}W_l + b_l, then a
   linear layer s = h_{N−1}W_N + b_N and a loss L. Its backward pass in plain NumPy: δ = ∂L/∂s
   at the output (softmax cross-entropy, mean over a batch of B: δ = (softmax(s) − 1_y)/B;
   squared error, mean over B·d entries: δ = 2(s − t)/(B·d)), then for each layer, last first,
   with x its cached input,

       dW = xᵀδ,   db = Σ_batch δ,   dx = δWᵀ,   δ ← dx ⊙ act′(z),

   where act′ = σ(1 − σ) for the sigmoid and 1[z > 0] for ReLU. The same network built as a
   `funcnet.nn.serial` of `dense` and `sigmoid`/`relu` layers supplies the params, and every dW
   and db is compared with `jax.grad` of the funcnet loss, in float64.

Run: python examples/backprop_by_hand.py
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

import funcnet as fn

W = (2.0, -3.0, -3.0)
X = (-1.0, -2.0)

# 1. One sigmoid neuron ------------------------------------------------------------------


def neuron(w: jax.Array, x: jax.Array) -> jax.Array:
    """f = σ(w₀x₀ + w₁x₁ + w₂); w of shape (3,), x of shape (2,)."""
    return fn.nn.sigmoid(w[0] * x[0] + w[1] * x[1] + w[2])


def neuron_trace(w: tuple[float, ...], x: tuple[float, ...]) -> list[tuple[str, str, float, float]]:
    """The forward and backward pass of `neuron` by hand, one row per node of the graph.

    Returns rows `(node, expression, value, ∂f/∂node)`, inputs first, output last. Each
    gradient is the gradient of the node it feeds times that node's local gradient.
    """
    w0, w1, w2 = w
    x0, x1 = x
    a = w0 * x0
    b = w1 * x1
    s = a + b
    z = s + w2
    f = 1.0 / (1.0 + math.exp(-z))
    df = 1.0
    dz = f * (1.0 - f) * df  # σ′(z) = σ(z)(1 − σ(z))
    ds = dw2 = dz  # a sum has local gradient 1 for each input
    da = db = ds
    dw0, dx0 = x0 * da, w0 * da  # a product's local gradient for one input is the other input
    dw1, dx1 = x1 * db, w1 * db
    return [
        ("w0", "w₀", w0, dw0),
        ("x0", "x₀", x0, dx0),
        ("w1", "w₁", w1, dw1),
        ("x1", "x₁", x1, dx1),
        ("w2", "w₂", w2, dw2),
        ("a", "w₀·x₀", a, da),
        ("b", "w₁·x₁", b, db),
        ("s", "a + b", s, ds),
        ("z", "s + w₂", z, dz),
        ("f", "σ(z)", f, df),
    ]


def sigmoid_trace(z: float) -> list[tuple[str, str, float, float]]:
    """σ(z) = 1/(1 + e^{−z}) split into elementary nodes, with ∂σ/∂node for each.

    Returns rows `(node, expression, value, ∂σ/∂node)` from z to σ; the row of z holds the
    product of the local gradients, which equals σ(z)(1 − σ(z)).
    """
    u = -z
    e = math.exp(u)
    d = 1.0 + e
    sig = 1.0 / d
    dsig = 1.0
    dd = -1.0 / d**2 * dsig  # d(1/d)/dd = −1/d²
    de = dd  # d(1 + e)/de = 1
    du = e * de  # d(e^u)/du = e^u
    dz = -du  # d(−z)/dz = −1
    return [
        ("z", "z", z, dz),
        ("u", "−z", u, du),
        ("e", "exp u", e, de),
        ("d", "1 + e", d, dd),
        ("σ", "1/d", sig, dsig),
    ]


# 2. An N-layer network, backward in NumPy -----------------------------------------------

ACTIVATIONS = {"sigmoid": fn.nn.sigmoid, "relu": fn.nn.relu}


def network(depth: int, hidden: int, out: int, activation: str) -> fn.nn.Layer:
    """`depth` dense layers: depth − 1 hidden ones of width `hidden` followed by `activation`,
    then a linear layer of `out` features."""
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    layers = []
    for _ in range(depth - 1):
        layers += [fn.nn.dense(hidden), ACTIVATIONS[activation]]
    return fn.nn.serial(*layers, fn.nn.dense(out))


def funcnet_loss(
    model: fn.nn.Layer, params: dict, x: jax.Array, y: jax.Array, loss: str
) -> jax.Array:
    """The funcnet loss of `model`: softmax cross-entropy on integer labels `y` of shape
    (batch,), or the squared error `mse` against targets `y` of shape (batch, out)."""
    scores, _ = model.apply(params, {}, x)
    if loss == "cross_entropy":
        return fn.losses.softmax_cross_entropy(scores, y)
    return fn.losses.mse(scores, y)


def numpy_forward(layers: list[tuple[np.ndarray, np.ndarray]], x: np.ndarray, activation: str):
    """Forward pass in NumPy; `layers` is [(W, b), ...] with W of shape (in, out).

    Returns the scores, shape (batch, out), and a cache with, per layer, its input and its
    pre-activation z (the last layer's z is the scores).
    """
    cache = []
    h = x
    for i, (w, b) in enumerate(layers):
        z = h @ w + b
        cache.append((h, z))
        if i < len(layers) - 1:
            h = 1.0 / (1.0 + np.exp(-z)) if activation == "sigmoid" else np.maximum(z, 0.0)
    return z, cache


def output_delta(scores: np.ndarray, y: np.ndarray, loss: str) -> np.ndarray:
    """δ = ∂L/∂s for the mean loss over the batch, shape (batch, out)."""
    if loss == "cross_entropy":
        shifted = scores - scores.max(axis=1, keepdims=True)
        p = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
        p[np.arange(len(y)), y] -= 1.0  # p − 1_y
        return p / len(y)
    return 2.0 * (scores - y) / y.size  # mse averages over every entry


def numpy_backward(
    layers: list[tuple[np.ndarray, np.ndarray]],
    cache: list[tuple[np.ndarray, np.ndarray]],
    delta: np.ndarray,
    activation: str,
) -> list[dict]:
    """dW = xᵀδ, db = Σ_batch δ, dx = δWᵀ, then δ = dx ⊙ act′(z) of the layer below.

    Returns [{"w": dW, "b": db}, ...] in layer order.
    """
    grads = [None] * len(layers)
    for i in reversed(range(len(layers))):
        h = cache[i][0]  # this layer's input
        w = layers[i][0]
        grads[i] = {"w": h.T @ delta, "b": delta.sum(axis=0)}
        if i == 0:
            break
        dx = delta @ w.T
        z_below = cache[i - 1][1]
        if activation == "sigmoid":
            local = h * (1.0 - h)  # h = σ(z) is this layer's cached input: σ′ = σ(1 − σ)
        else:
            local = (z_below > 0).astype(dx.dtype)
        delta = dx * local
    return grads


def compare_network(
    depth: int = 3,
    activation: str = "sigmoid",
    loss: str = "cross_entropy",
    *,
    batch: int = 16,
    features: int = 5,
    hidden: int = 8,
    out: int = 4,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """NumPy backward vs `jax.grad` of the funcnet loss, in float64.

    Returns {dense layer name: {"w": rel. difference of dW, "b": rel. difference of db}}, each
    max |NumPy − jax| / max |jax|.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    if loss not in ("cross_entropy", "squared"):
        raise ValueError(f"loss must be 'cross_entropy' or 'squared', got {loss!r}")
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, features))
    if loss == "cross_entropy":
        y = rng.integers(0, out, size=batch)
    else:
        y = rng.normal(size=(batch, out))
    model = network(depth, hidden, out, activation)
    with jax.enable_x64(True):
        _, params, _ = model.init(jax.random.key(seed), (batch, features))
        # lecun_normal weights and zero biases; random biases make db a sharper test
        params = {
            name: {**p, "b": jnp.asarray(rng.normal(scale=0.5, size=p["b"].shape))}
            if name.startswith("dense")
            else p
            for name, p in params.items()
        }
        by_jax = jax.grad(funcnet_loss, argnums=1)(model, params, jnp.asarray(x), y, loss)
    names = [name for name in params if name.startswith("dense")]
    layers = [(np.asarray(params[n]["w"]), np.asarray(params[n]["b"])) for n in names]
    scores, cache = numpy_forward(layers, x, activation)
    by_hand = numpy_backward(layers, cache, output_delta(scores, y, loss), activation)
    return {
        name: {k: _rel(g[k], np.asarray(by_jax[name][k])) for k in ("w", "b")}
        for name, g in zip(names, by_hand, strict=True)
    }


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


# Main -----------------------------------------------------------------------------------


def main(depth: int = 3, activation: str = "sigmoid", loss: str = "cross_entropy") -> dict:
    """Print the neuron's graph and the network comparison; return the printed numbers."""
    rows = neuron_trace(W, X)
    print(f"f = σ(w₀x₀ + w₁x₁ + w₂) at w = {W}, x = {X}")
    print(f"  {'node':<6} {'expression':<12} {'value':>8} {'∂f/∂node':>10}")
    for node, expression, value, grad in rows:
        print(f"  {node:<6} {expression:<12} {value:>8.2f} {grad:>10.2f}")
    by_node = {node: (value, grad) for node, _, value, grad in rows}
    f = by_node["f"][0]
    dw = tuple(by_node[n][1] for n in ("w0", "w1", "w2"))
    dx = tuple(by_node[n][1] for n in ("x0", "x1"))

    z = by_node["z"][0]
    print(f"\nσ′(z) through σ's own nodes, at z = {z:g}:")
    print(f"  {'node':<6} {'expression':<12} {'value':>8} {'∂σ/∂node':>10}")
    sigmoid_rows = sigmoid_trace(z)
    for node, expression, value, grad in sigmoid_rows:
        print(f"  {node:<6} {expression:<12} {value:>8.2f} {grad:>10.2f}")
    chained = sigmoid_rows[0][3]
    print(f"  chain of local gradients {chained:.6f} = σ(1 − σ) = {f * (1 - f):.6f}")

    with jax.enable_x64(True):
        w, x = jnp.array(W), jnp.array(X)
        grad_w, grad_x = jax.grad(neuron, argnums=(0, 1))(w, x)
        value, pullback = jax.vjp(neuron, w, x)
        vjp_w, vjp_x = pullback(jnp.ones_like(value))  # cotangent 1.0 on the scalar output
    by_hand = np.array(dw + dx)
    grad_error = float(np.max(np.abs(by_hand - np.concatenate([grad_w, grad_x]))))
    vjp_error = float(np.max(np.abs(by_hand - np.concatenate([vjp_w, vjp_x]))))
    print(f"\n  by hand   dw = {_fmt(dw)}  dx = {_fmt(dx)}")
    print(f"  jax.grad  dw = {_fmt(grad_w)}  dx = {_fmt(grad_x)}  (max |diff| {grad_error:.1e})")
    print(f"  jax.vjp   dw = {_fmt(vjp_w)}  dx = {_fmt(vjp_x)}  (max |diff| {vjp_error:.1e})")
    print(f"  jax.vjp returns f = {float(value):.2f} and pulls back the cotangent 1.0 in one sweep")

    differences = compare_network(depth, activation, loss)
    print(
        f"\n{depth}-layer network, {activation} hidden layers, {loss.replace('_', ' ')} loss:"
        " NumPy backward vs jax.grad (max relative difference, float64)"
    )
    for name, diff in differences.items():
        print(f"  {name:<8} dW {diff['w']:.1e}   db {diff['b']:.1e}")

    return {
        "nodes": {node: {"value": value, "grad": grad} for node, _, value, grad in rows},
        "sigmoid nodes": {node: {"value": v, "grad": g} for node, _, v, g in sigmoid_rows},
        "f": f,
        "dw": dw,
        "dx": dx,
        "jax.grad dw": tuple(float(v) for v in grad_w),
        "jax.grad dx": tuple(float(v) for v in grad_x),
        "jax.vjp dw": tuple(float(v) for v in vjp_w),
        "jax.vjp dx": tuple(float(v) for v in vjp_x),
        "jax.grad max difference": grad_error,
        "jax.vjp max difference": vjp_error,
        "network": differences,
    }


def _fmt(values) -> str:
    return "(" + ", ".join(f"{float(v):.2f}" for v in values) + ")"


if __name__ == "__main__":
    main()
