"""Without activations, depth buys nothing: a stack of linear layers is one linear layer.

Dense layers map x ↦ xW + b (x a row vector). Two in a row give

    (xW₁ + b₁)W₂ + b₂ = x(W₁W₂) + (b₁W₂ + b₂),

a single dense layer with W = W₁W₂ and b = b₁W₂ + b₂; by induction a stack of any depth
collapses to W = W₁W₂⋯W_L and b = (⋯((b₁W₂ + b₂)W₃ + b₃)⋯)W_L + b_L. The example builds a
4-layer stack 8 → 16 → 3 → 16 → 4 with `funcnet.nn.serial` and `funcnet.nn.dense`, collapses
its params with `collapse`, and prints the largest difference between the two maps on random
inputs (float32 round-off, about 1e-6; about 1e-15 with `--x64`). The collapsed W is also
rank-limited: rank(W₁⋯W_L) ≤ min rank(Wᵢ) ≤ the narrowest width (3 here), so the deep linear
model can express fewer maps than a single 8 → 4 layer, never more.

Then the same weights with a nonlinearity (relu or tanh) after every hidden layer: the best
single affine map, fitted by least squares (`numpy.linalg.lstsq`) to the network's own
outputs, leaves a clear residual, while for the linear stack it leaves only round-off. The
residual is reported as ‖Y − Ŷ‖ / ‖Y − Ȳ‖, the fraction of the outputs' spread (about their
mean Ȳ) that no affine map explains.

Run: python examples/linear_collapse.py [--batch 1024] [--x64]
"""

import argparse
import functools

import jax
import jax.numpy as jnp
import numpy as np

import funcnet

IN_FEATURES = 8
WIDTHS = (16, 3, 16, 4)  # the narrowest, 3, caps the rank of the collapsed map
ACTIVATIONS = {"relu": funcnet.nn.relu, "tanh": funcnet.nn.tanh}


def dense(width: int) -> funcnet.nn.Layer:
    # Random biases (not the default zeros), so that the collapsed bias is put to the test.
    return funcnet.nn.dense(width, b_init=funcnet.nn.initializers.normal(0.5))


def stack(activation=None) -> funcnet.nn.Layer:
    """Dense layers of `WIDTHS`, with `activation` after each hidden one when given."""
    layers = []
    for width in WIDTHS[:-1]:
        layers += [dense(width)] + ([activation] if activation else [])
    return funcnet.nn.serial(*layers, dense(WIDTHS[-1]))


def collapse(params: dict) -> dict:
    """The params ``{"w", "b"}`` of the one dense layer equal to a stack of dense layers.

    Folds ``(W, b) ← (W·Wᵢ, b·Wᵢ + bᵢ)`` over the layers in order; `params` is the dict of a
    `funcnet.nn.serial` of dense layers (entries ``{"w": (in, out), "b": (out,)}``).
    """
    layers = list(params.values())
    w, b = layers[0]["w"], layers[0]["b"]
    for layer in layers[1:]:
        w, b = w @ layer["w"], b @ layer["w"] + layer["b"]
    return {"w": w, "b": b}


def with_activation(params: dict, activation) -> tuple[funcnet.nn.Layer, dict]:
    """`stack(activation)` carrying the dense weights of `params` (a `stack()`'s params)."""
    model = stack(activation)
    _, template, _ = model.init(jax.random.key(0), (1, IN_FEATURES))
    dense = iter(params.values())
    # Activation layers have no params (empty dicts); dense ones take the next weights in order.
    return model, {name: next(dense) if entry else entry for name, entry in template.items()}


def affine_residual(x: jax.Array, y: jax.Array) -> float:
    """‖Y − Ŷ‖ / ‖Y − Ȳ‖ for the least-squares affine fit Ŷ = [x, 1]·β of `y` on `x`."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    design = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    beta, *_ = np.linalg.lstsq(design, y, rcond=None)
    return float(np.linalg.norm(y - design @ beta) / np.linalg.norm(y - y.mean(axis=0)))


@functools.partial(jax.jit, static_argnums=0)
def outputs(batch: int) -> dict:
    """Random inputs ``x`` of shape ``(batch, IN_FEATURES)``; the outputs ``y`` of the linear
    stack, its collapsed params ``single`` and their outputs ``y_single``; and the outputs of
    the same weights with each of `ACTIVATIONS` between the layers (``nonlinear``). One
    compiled function rather than many small eager ops."""
    init_key, data_key = jax.random.split(jax.random.key(0))
    x = jax.random.normal(data_key, (batch, IN_FEATURES))
    model = stack()
    _, params, _ = model.init(init_key, x.shape)
    single = collapse(params)
    nonlinear = {}
    for name, activation in ACTIVATIONS.items():
        nonlinear_model, nonlinear_params = with_activation(params, activation)
        nonlinear[name] = nonlinear_model.apply(nonlinear_params, {}, x)[0]
    return {
        "x": x,
        "y": model.apply(params, {}, x)[0],
        "single": single,
        "y_single": funcnet.nn.dense(WIDTHS[-1]).apply(single, {}, x)[0],
        "nonlinear": nonlinear,
    }


def run(batch: int) -> dict:
    """The numbers `main` prints."""
    out = outputs(batch)
    x, y = out["x"], out["y"]
    difference = float(jnp.max(jnp.abs(y - out["y_single"])))
    singular_values = np.linalg.svd(np.asarray(out["single"]["w"], np.float64), compute_uv=False)
    rank = int(np.sum(singular_values > 1e-4 * singular_values[0]))
    residuals = {"none (linear stack)": affine_residual(x, y)}
    for name, y_nonlinear in out["nonlinear"].items():
        residuals[name] = affine_residual(x, y_nonlinear)
    return {
        "dtype": str(y.dtype),
        "difference": difference,
        "singular_values": singular_values.tolist(),
        "rank": rank,
        "narrowest": min(WIDTHS),
        "residual": residuals,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--x64", action="store_true", help="compute in float64")
    args = parser.parse_args(argv)
    with jax.enable_x64(args.x64):
        results = run(args.batch)

    shape = " → ".join(map(str, (IN_FEATURES, *WIDTHS)))
    print(f"linear stack {shape}, {results['dtype']}, {args.batch} random inputs")
    print(
        "  max |stack(x) − (x W + b)| with W = W₁W₂W₃W₄, b = ((b₁W₂ + b₂)W₃ + b₃)W₄ + b₄: "
        f"{results['difference']:.2e}"
    )
    print(
        f"  singular values of W ({IN_FEATURES}×{WIDTHS[-1]}): "
        + "  ".join(f"{s:.2e}" for s in results["singular_values"])
    )
    print(f"  rank of W: {results['rank']} ≤ narrowest width {results['narrowest']}")
    print("\nbest single affine map (least squares), residual ‖Y − Ŷ‖ / ‖Y − Ȳ‖")
    width = max(map(len, results["residual"]))
    for name, residual in results["residual"].items():
        print(f"  activation {name:<{width}}  {residual:.2e}")
    return results


if __name__ == "__main__":
    main()
