"""Vanishing and exploding gradients: per-layer gradient norms through deep MLPs.

An MLP of depth L has weight matrices W_1 … W_L (hidden layers of `--width` units, 10
outputs) with ``z_l = W_l h_{l−1} + b_l`` and ``h_l = σ(z_l)``. Backpropagation gives
``∂L/∂W_l = δ_l h_{l−1}ᵀ`` with ``δ_l = ∂L/∂z_l``, and

    δ_l = diag(σ′(z_l)) W_{l+1}ᵀ diag(σ′(z_{l+1})) W_{l+2}ᵀ ⋯ W_Lᵀ δ_L,

a product of L − l Jacobians ``W_kᵀ diag(σ′(z_k))``. Each scales the typical entry of the
backward signal by roughly ``√(fan_out · Var(w)) · |σ′|``; over many layers a factor below 1
makes the gradients vanish towards the input, above 1 explode. The sigmoid has ``σ′ ≤ 1/4``,
so at the Xavier scale it loses at least a factor 4 per layer, and weights large enough to
make up for it saturate it (σ′ → 0) instead.
The variance-preserving initialisations pick ``Var(w)`` so the factor is about 1:

- Xavier/Glorot, ``Var(w) = 2 / (fan_in + fan_out)``, for activations with σ′(0) = 1 (tanh):
  the compromise between keeping the forward variance (``fan_in · Var(w) = 1``) and the
  backward one (``fan_out · Var(w) = 1``);
- He/Kaiming, ``Var(w) = 2 / fan_in``, for ReLU, which zeroes half its inputs and so halves
  the second moment of the signal in each layer.

Each network here gets one standardized batch of the 8×8 digits, and `jax.grad` of the softmax
cross-entropy gives every ‖∂L/∂W_l‖ (Frobenius norm), for the sigmoid, tanh and ReLU, with
four initialisations of all weights (biases start at zero):

- ``N(0, 0.01²)``, the small fixed scale of the classic lecture, to show vanishing;
- ``N(0, 1)``, a large fixed scale, to show explosion (and saturation for the sigmoid);
- Xavier (``glorot_normal``) and He (``he_normal``);

each without and with batch norm (dense → batch_norm → σ, in training mode, so every hidden
pre-activation is normalised by its batch statistics).

Two things to read in the results. The *slope* of log ‖∂L/∂W_l‖ over l is what the printed
ratio ‖∂L/∂W_1‖ / ‖∂L/∂W_L‖ measures: the sigmoid's ratio falls geometrically with depth for
every initialisation, and batch norm brings it back near 1. The *level* is the other failure:
ReLU is positively homogeneous (and tanh nearly linear near 0), so weights c times the He
scale shrink or grow the forward signal h_{l−1} by c per layer just as they shrink or grow
δ_l, and every layer's gradient carries the same factor c^{L−1}: the profile stays flat while
all of it vanishes (N(0, 0.01²)) or explodes (N(0, 1)) together; the second table shows it.
With tanh, N(0, 1) is in the chaotic regime where the backward factor exceeds 1 and gradients
explode towards the input. Batch norm removes the dependence on the weights' scale (the
results barely change between initialisations), but at initialisation it makes deep ReLU and
tanh gradients grow towards the input, by about 1.2 per layer for ReLU here (Yang et al.,
2019, "A Mean Field Theory of Batch Normalization").

The norms span more than a hundred orders of magnitude (the first layer of the deepest
sigmoid net at N(0, 0.01²) gets about 1e-83), beyond float32's range of about 1e-38 to 3e38,
so everything runs in float64. The figure `vanishing_gradients.png` in `--out` draws
‖∂L/∂W_l‖ against l on a log scale for the deepest network, one panel per activation, one
colour per initialisation, batch norm dashed.

Run: python examples/vanishing_gradients.py [--out runs/] [--depths 2 5 10 20 50] [--width 64]
"""

from __future__ import annotations

import argparse
import pathlib
import time
from functools import partial

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

import funcnet
from funcnet.nn import initializers

ACTIVATIONS = {"sigmoid": funcnet.nn.sigmoid, "tanh": funcnet.nn.tanh, "relu": funcnet.nn.relu}
INITS = {
    "N(0, 0.01²)": initializers.normal(0.01),
    "N(0, 1)": initializers.normal(1.0),
    "Xavier": initializers.glorot_normal(),
    "He": initializers.he_normal(),
}
NUM_CLASSES = 10


def build(depth: int, width: int, activation: str, init: str, batch_norm: bool) -> funcnet.nn.Layer:
    """An MLP with `depth` dense layers: ``depth − 1`` hidden layers of `width` units, each
    dense → (batch_norm →) activation, then a dense layer of 10 logits.

    `activation` is a key of `ACTIVATIONS`, `init` a key of `INITS`, used for every kernel.
    Dense layers followed by batch norm have no bias (batch norm subtracts it again).
    """
    w_init, sigma = INITS[init], ACTIVATIONS[activation]
    layers = []
    for _ in range(depth - 1):
        layers.append(funcnet.nn.dense(width, w_init=w_init, use_bias=not batch_norm))
        if batch_norm:
            layers.append(funcnet.nn.batch_norm())
        layers.append(sigma)
    layers.append(funcnet.nn.dense(NUM_CLASSES, w_init=w_init))
    return funcnet.nn.serial(*layers)


def layer_gradient_norms(
    model: funcnet.nn.Layer, params: dict, state: dict, x: jax.Array, y: jax.Array
) -> jax.Array:
    """‖∂L/∂W_l‖ (Frobenius) for each dense layer l = 1 … L, input side first.

    L is the mean softmax cross-entropy of `model` on the batch `x` of shape ``(n, features)``
    with integer labels `y` of shape ``(n,)``, in training mode (batch statistics). Returns
    shape ``(L,)``.
    """

    def loss(p):
        logits, _ = model.apply(p, state, x, train=True)
        return funcnet.losses.softmax_cross_entropy(logits, y)

    grads = jax.grad(loss)(params)
    # serial names its children "{kind}_{position}"; order the dense layers by position.
    dense = sorted((k for k in grads if k.startswith("dense_")), key=lambda k: int(k[6:]))
    return jnp.stack([jnp.linalg.norm(grads[k]["w"]) for k in dense])


def measure(
    depths: list[int], width: int, x: jax.Array, y: jax.Array, key: jax.Array
) -> dict[tuple[str, str, bool], dict[int, np.ndarray]]:
    """Per-layer gradient norms for every (activation, init, batch_norm) and depth."""
    norms = {(a, i, bn): {} for a in ACTIVATIONS for i in INITS for bn in (False, True)}
    for activation in ACTIVATIONS:
        for batch_norm in (False, True):
            for depth in depths:
                # The initialisations differ only in the numbers `init` draws, so the
                # networks share one `apply` and one compiled gradient.
                models = {i: build(depth, width, activation, i, batch_norm) for i in INITS}
                grad_norms = jax.jit(partial(layer_gradient_norms, models["He"]))
                for init, model in models.items():
                    _, params, state = model.init(key, x.shape)
                    norms[activation, init, batch_norm][depth] = np.asarray(
                        grad_norms(params, state, x, y)
                    )
    return norms


def print_table(title: str, values: dict, depths: list[int]) -> None:
    print(f"\n{title}")
    print(f"{'activation':<10} {'init':<12} {'bn':<4}" + "".join(f"{f'L={d}':>10}" for d in depths))
    for (activation, init, batch_norm), by_depth in values.items():
        row = f"{activation:<10} {init:<12} {'yes' if batch_norm else 'no':<4}"
        print(row + "".join(f"{by_depth[d]:>10.1e}" for d in depths))


def plot(norms: dict, depth: int, path: pathlib.Path) -> None:
    """One panel per activation: a colour per initialisation without batch norm, and the
    batch-norm curves in one grey dashed style, since they nearly coincide."""
    fig, axes = plt.subplots(
        1, len(ACTIVATIONS), figsize=(5 * len(ACTIVATIONS), 4.6), layout="constrained"
    )
    layers = np.arange(1, depth + 1)
    for ax, activation in zip(axes, ACTIVATIONS, strict=True):
        for color, init in enumerate(INITS):
            values = norms[activation, init, False][depth]
            ax.semilogy(layers, values, color=f"C{color}", lw=1.4, label=init)
        for i, init in enumerate(INITS):
            label = "any of the four + batch norm" if i == 0 else None
            values = norms[activation, init, True][depth]
            ax.semilogy(layers, values, "--", color="0.35", lw=1.2, label=label)
        ax.set_title(activation)
        ax.set_xlabel("layer l (1 = input side)")
        ax.set_ylabel(r"$\|\partial L / \partial W_l\|$")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, which="major", alpha=0.3)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=5)
    fig.suptitle(f"Per-layer gradient norms at initialisation, {depth} dense layers")
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs"))
    parser.add_argument("--depths", type=int, nargs="+", default=[2, 5, 10, 20, 50])
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--batch", type=int, default=256, help="examples in the batch")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if min(args.depths) < 2:
        parser.error("--depths must be at least 2 (one hidden layer)")
    depths = sorted(set(args.depths))

    start = time.perf_counter()
    data = funcnet.data.digits()
    (x,) = funcnet.data.standardize(data.x_train)
    with jax.enable_x64(True):
        x = jnp.asarray(x[: args.batch], jnp.float64)
        y = data.y_train[: args.batch]
        norms = measure(depths, args.width, x, y, jax.random.key(args.seed))
    print(
        f"MLPs of width {args.width} on a batch of {x.shape[0]} standardized digits; "
        f"depth L = number of dense layers; float64"
    )
    ratios = {c: {d: float(n[0] / n[-1]) for d, n in v.items()} for c, v in norms.items()}
    first = {c: {d: float(n[0]) for d, n in v.items()} for c, v in norms.items()}
    print_table(
        "‖∂L/∂W_1‖ / ‖∂L/∂W_L‖ (first layer over last; 1 is a flat profile)", ratios, depths
    )
    print_table("‖∂L/∂W_1‖ (first layer)", first, depths)

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "vanishing_gradients.png"
    plot(norms, depths[-1], path)
    print(f"\n{time.perf_counter() - start:.1f} s; saved {path}")
    return {"norms": norms, "ratio": ratios, "first": first, "figure": path}


if __name__ == "__main__":
    main()
