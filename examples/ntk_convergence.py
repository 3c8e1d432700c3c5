"""The empirical neural tangent kernel of a wide two-layer ReLU network tends to the arc-cosine NTK.

The network, in the NTK parameterisation and without biases, is

    f(x) = (1/√m) Σ_j a_j relu(w_jᵀ x / √d),    a_j ~ N(0, 1), w_j ~ N(0, I_d),

with x ∈ ℝᵈ and width m. Its parameter gradients are ∂f/∂a_j = relu(u_j)/√m and
∂f/∂w_j = a_j 1[u_j > 0] x / √(m d), with u_j = w_jᵀx/√d, so the empirical kernel

    Θ_m(x, x') = (1/m) Σ_j [relu(u_j) relu(u'_j) + a_j² 1[u_j > 0] 1[u'_j > 0] xᵀx'/d]

is a mean of m independent terms. Its expectation is the same for every m, and is the
infinite-width NTK (Jacot et al., 2018). (u, u') is a centred Gaussian pair with variances
|x|²/d, |x'|²/d and correlation ρ = cos ∠(x, x'), and the arc-cosine kernels of Cho & Saul
(2009) give

    E[relu(u) relu(u')] = (|x||x'|/d) · κ₁(ρ)/2,   κ₁(ρ) = (√(1 − ρ²) + (π − arccos ρ) ρ)/π,
    E[1[u > 0] 1[u' > 0]] = κ₀(ρ)/2,               κ₀(ρ) = (π − arccos ρ)/π,

so, with E[a²] = 1,

    Θ∞(x, x') = (|x||x'|/(2d)) · (κ₁(ρ) + ρ κ₀(ρ)).

Being a mean of m i.i.d. terms, Θ_m − Θ∞ has mean 0 and standard deviation ∝ 1/√m: the
error falls by 4 when the width grows 16-fold.

Figures in `--out`: `ntk_convergence.png`, with (left) Θ_m(x₀, x(φ)) for unit inputs at angle
φ for several widths against Θ∞, and (right) the relative error ‖Θ_m − Θ∞‖_F / ‖Θ∞‖_F on a
few inputs, root-mean-square over `--seeds` networks, against m on log-log axes with a
1/√m guide.

The three methods of `funcnet.diff.ntk` are then timed on tanh MLPs of a few shapes
(batch × width × outputs × depth, float32, compiled, median of `--repeats` runs), and the
fastest is printed for each.

Run: python examples/ntk_convergence.py [--out runs/] [--widths 64 256 ...] [--seeds 8]
"""

from __future__ import annotations

import argparse
import pathlib
import time

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import NullLocator

from funcnet.diff.ntk import empirical_ntk

METHODS = ("jacobian", "ntvp", "structured")
DEFAULT_SHAPES = (
    "16x64x1x2",
    "16x512x1x2",
    "64x512x1x2",
    "64x32x4x3",
    "16x64x32x2",
    "8x32x64x3",
    "16x256x16x4",
    "conv:16x16x1x2",
    "conv:16x16x16x2",
    "conv:8x16x64x2",
)
RULE = """rule of thumb (cost for n examples, O outputs, P params; a forward pass costs F ≈ P per
example for dense layers, ≫ P with weight sharing):
  structured: models built of dense kernels, at any width: per kernel (x₁·x₂)(δ₁δ₂ᵀ) costs
    n²·O²·width instead of n²·O²·in·width; its lead over the Jacobian grows with the width.
  NTK-vector products: few examples, many outputs, narrow dense layers: n²·O forward passes,
    no O² factor on P; beats the Jacobian contraction on MLPs from about O = 4.
  Jacobian contraction: weight-shared layers (convolutions), few outputs: n·O backward passes
    plus n²·O²·P, where the products would pay n²·O forward passes of cost F ≫ P."""


def two_layer(params: dict, x: jax.Array) -> jax.Array:
    """(1/√m) relu(x W / √d) a for x of shape (batch, d): outputs (batch, 1)."""
    d, m = params["w"].shape
    return jax.nn.relu(x @ params["w"] / np.sqrt(d)) @ params["a"] / np.sqrt(m)


def init_two_layer(key: jax.Array, d: int, m: int) -> dict:
    w_key, a_key = jax.random.split(key)
    return {"w": jax.random.normal(w_key, (d, m)), "a": jax.random.normal(a_key, (m, 1))}


def arccos_ntk(x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
    """Θ∞(x, x') = (|x||x'|/(2d)) (κ₁(ρ) + ρ κ₀(ρ)) for every pair: shape (n₁, n₂)."""
    n1, n2 = np.linalg.norm(x1, axis=1), np.linalg.norm(x2, axis=1)
    norms = np.outer(n1, n2)
    rho = np.clip(x1 @ x2.T / norms, -1.0, 1.0)
    theta = np.arccos(rho)
    k0 = (np.pi - theta) / np.pi
    k1 = (np.sqrt(1 - rho**2) + (np.pi - theta) * rho) / np.pi
    return norms / (2 * x1.shape[1]) * (k1 + rho * k0)


def relative_errors(widths, seeds: int, x: np.ndarray) -> np.ndarray:
    """‖Θ_m − Θ∞‖_F / ‖Θ∞‖_F on the inputs x, per width (rows) and seed (columns)."""
    exact = arccos_ntk(x, x)
    errors = np.empty((len(widths), seeds))
    for i, m in enumerate(widths):
        kernel = jax.jit(
            lambda key, m=m: empirical_ntk(
                two_layer, init_two_layer(key, x.shape[1], m), x, method="structured", trace=True
            )
        )
        for s in range(seeds):
            got = np.asarray(kernel(jax.random.key(1000 * s + i)))
            errors[i, s] = np.linalg.norm(got - exact) / np.linalg.norm(exact)
    return errors


def mlp_problem(batch: int, width: int, outputs: int, depth: int, d: int = 8):
    """A tanh MLP d → width (× depth hidden layers) → outputs, float32, and a batch."""
    keys = jax.random.split(jax.random.key(7), depth + 2)
    sizes = [d] + [width] * depth + [outputs]
    params = {
        f"dense_{i}": {
            "w": jax.random.normal(keys[i], (sizes[i], sizes[i + 1])) / np.sqrt(sizes[i]),
            "b": jnp.zeros(sizes[i + 1]),
        }
        for i in range(depth + 1)
    }

    def apply(p, x):
        for i in range(depth):
            x = jnp.tanh(x @ p[f"dense_{i}"]["w"] + p[f"dense_{i}"]["b"])
        return x @ p[f"dense_{depth}"]["w"] + p[f"dense_{depth}"]["b"]

    x = jax.random.normal(keys[-1], (batch, d))
    return apply, params, x


def conv_problem(batch: int, channels: int, outputs: int, depth: int, side: int = 8):
    """A tanh CNN: `depth` 3×3 convolutions of `channels` channels on side × side images, a
    global average pool, and a dense layer to `outputs`; float32, and a batch."""
    keys = jax.random.split(jax.random.key(8), depth + 2)
    sizes = [1] + [channels] * depth
    params = {
        f"conv_{i}": jax.random.normal(keys[i], (3, 3, sizes[i], sizes[i + 1]))
        / (3 * sizes[i] ** 0.5)
        for i in range(depth)
    }
    params["dense"] = jax.random.normal(keys[depth], (channels, outputs)) / np.sqrt(channels)

    def apply(p, x):
        for i in range(depth):
            x = jnp.tanh(
                jax.lax.conv_general_dilated(
                    x, p[f"conv_{i}"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
                )
            )
        return jnp.mean(x, axis=(1, 2)) @ p["dense"]

    x = jax.random.normal(keys[-1], (batch, side, side, 1))
    return apply, params, x


def time_methods(shape: str, repeats: int) -> dict:
    """Median seconds of each method's compiled kernel on one shape: "BxWxOxL" for an MLP
    (batch, width, outputs, depth), "conv:BxCxOxL" for a CNN (channels in place of width)."""
    kind, _, dims = shape.rpartition(":")
    batch, width, outputs, depth = (int(v) for v in dims.split("x"))
    problem = conv_problem if kind == "conv" else mlp_problem
    apply, params, x = problem(batch, width, outputs, depth)
    n_params = sum(leaf.size for leaf in jax.tree.leaves(params))
    times = {}
    for method in METHODS:
        fn = jax.jit(lambda p, x, method=method: empirical_ntk(apply, p, x, method=method))
        fn(params, x).block_until_ready()
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn(params, x).block_until_ready()
            runs.append(time.perf_counter() - start)
        times[method] = float(np.median(runs))
    return {"params": n_params, "times": times, "best": min(times, key=times.get)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs")
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 256, 1024, 4096, 16384])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--angles", type=int, default=61)
    parser.add_argument("--shapes", nargs="*", default=list(DEFAULT_SHAPES))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    with jax.enable_x64(True):
        # Kernel over the angle between two unit inputs in ℝ².
        phi = np.linspace(0, np.pi, args.angles)
        x0, xs = np.array([[1.0, 0.0]]), np.stack([np.cos(phi), np.sin(phi)], axis=1)
        exact_curve = arccos_ntk(x0, xs)[0]
        curves = {}
        for m in args.widths:
            params = init_two_layer(jax.random.key(m), 2, m)
            kernel = empirical_ntk(two_layer, params, x0, xs, method="structured", trace=True)
            curves[m] = np.asarray(kernel)[0]
        # Error against width on five inputs of ℝ⁴ of different norms and angles.
        x = np.random.default_rng(0).normal(size=(5, 4))
        errors = relative_errors(args.widths, args.seeds, x)
    rms = np.sqrt(np.mean(errors**2, axis=1))
    slope = float(np.polyfit(np.log(args.widths), np.log(rms), 1)[0]) if len(rms) > 1 else np.nan

    print("relative error ‖Θ_m − Θ∞‖_F / ‖Θ∞‖_F (rms over seeds):")
    for m, e in zip(args.widths, rms, strict=True):
        print(f"  m = {m:>6d}: {e:.4f}   √m · error = {np.sqrt(m) * e:.3f}")
    print(f"log-log slope of error against width: {slope:.3f} (theory −0.5)")

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for m in args.widths:
        left.plot(phi, curves[m], lw=1, alpha=0.8, label=f"m = {m}")
    left.plot(phi, exact_curve, "k", lw=2, label="Θ∞ (arc-cosine)")
    left.set(xlabel="angle φ between unit inputs", ylabel="Θ(x₀, x(φ))", title="NTK vs angle")
    left.legend(fontsize=8)
    widths = np.asarray(args.widths, float)
    right.loglog(widths, rms, "o-", label="rms relative error")
    right.loglog(widths, rms[0] * np.sqrt(widths[0] / widths), "k--", label="∝ 1/√m")
    right.set_xticks(args.widths, [str(m) for m in args.widths])
    right.xaxis.set_minor_locator(NullLocator())
    right.set(
        xlabel="width m",
        ylabel=r"$\|\Theta_m - \Theta_\infty\|_F \;/\; \|\Theta_\infty\|_F$",
        title="relative error of the empirical NTK vs width",
    )
    right.legend()
    fig.tight_layout()
    figure = out / "ntk_convergence.png"
    fig.savefig(figure, dpi=110)
    plt.close(fig)

    timings = {}
    if args.shapes:
        print("\nseconds per kernel (n × n × out × out, float32, compiled, median):")
        print(
            f"  {'batch×width×out×depth':>22} {'params':>8} "
            + " ".join(f"{m:>11}" for m in METHODS)
        )
        for shape in args.shapes:
            timings[shape] = t = time_methods(shape, args.repeats)
            cells = " ".join(f"{t['times'][m]:11.2e}" for m in METHODS)
            print(f"  {shape:>22} {t['params']:>8d} {cells}   fastest: {t['best']}")
    if timings:
        print("\n" + RULE)
    print(f"\nfigure: {figure}")
    return {
        "widths": list(args.widths),
        "errors": errors,
        "rms": rms,
        "slope": slope,
        "phi": phi,
        "curves": curves,
        "exact_curve": exact_curve,
        "timings": timings,
        "rule": RULE,
        "figure": figure,
    }


if __name__ == "__main__":
    main()
