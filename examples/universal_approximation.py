"""Universal approximation: one hidden layer of sigmoids can fit any continuous function.

The argument in three steps, each one computed and plotted, with σ(z) = 1 / (1 + e^{−z}):

(a) A steep sigmoid is a step. σ(k(x − a)) → step(x − a) as k → ∞, uniformly away from a:
    since 1 − σ(z) = σ(−z) and σ increases, for |x − a| ≥ δ

        |σ(k(x − a)) − step(x − a)| = σ(−k|x − a|) ≤ σ(−kδ) = 1 / (1 + e^{kδ}),

    with equality at |x − a| = δ: the error decays like e^{−kδ}.
(b) Two steps make a bump. σ(k(x − a)) − σ(k(x − b)) → 1 on [a, b) and 0 outside, within
    2σ(−kδ) at distance ≥ δ from a and b. Cut [−2, 2] into n cells of width h and give the
    bump on cell i the height f(cᵢ) at its centre cᵢ: the staircase Σᵢ f(cᵢ)·bumpᵢ(x) is off
    by at most L·h/2 (L = max |f′|; near an edge it blends two heights, both within L·h/2 of
    f there, up to the sigmoids' tails), so its error falls like 1/n. (The two outer bumps
    reach one cell past the interval, so its ends are not edges.) Telescoped, the staircase is

        f(c₀)·σ(k(x − t₀)) + Σᵢ₌₁ⁿ⁻¹ (f(cᵢ) − f(cᵢ₋₁))·σ(k(x − tᵢ)) − f(cₙ₋₁)·σ(k(x − tₙ))

    over the cell edges tᵢ: a one-hidden-layer network of n + 1 sigmoid units whose weights
    are set by hand (`staircase_params`) rather than learned.
(c) Learned weights. The network y = w₂ᵀ σ(W₁x + b₁) + b₂ with `width` hidden units is
    trained by Adam on the mean squared error to fit f(x) = sin(3x) + 0.3x² on [−2, 2]; its
    test error falls as the width grows. The theorem (Cybenko 1989, Hornik 1991) promises
    that a good network exists, not that gradient descent finds it, so each width is trained
    from `--seeds` random starts at once (under `jax.vmap`) and the best one is kept.
    Learned weights use their units far better than the staircase: a few trained units
    reach an error that the staircase needs hundreds of steps for.

The figure goes to `universal_approximation.png` in `--out`.

Run: python examples/universal_approximation.py [--out runs/] [--widths 2 4 8 16 32]
         [--bumps 4 8 16 32 64] [--steps 4000] [--seeds 4]
"""

import argparse
import pathlib

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

import funcnet

LO, HI = -2.0, 2.0  # the interval on which f is approximated
STEP_AT = 0.5  # a, the position of the step in part (a)
BUMP = (-0.5, 0.5)  # [a, b), the bump of part (b)
DELTA = 0.05  # δ, the half-width of the band left out around each edge
SHARPNESS = 40.0  # k·h of the staircase: its sigmoids rise within a small part of a cell
TEST_POINTS = 4001
TRAIN_POINTS = 256


def target(x: jax.Array) -> jax.Array:
    """The function approximated, ``f(x) = sin(3x) + 0.3x²``."""
    return jnp.sin(3 * x) + 0.3 * x**2


def step_error(k: float, a: float = STEP_AT, delta: float = DELTA) -> tuple[float, float]:
    """Max of ``|σ(k(x − a)) − step(x − a)|`` over ``δ ≤ |x − a| ≤ δ + 2``, and the bound
    ``σ(−kδ)``."""
    offset = delta + jnp.linspace(0.0, 2.0, TEST_POINTS)
    d = jnp.concatenate([-offset, offset])  # x − a, with |x − a| = δ on the grid
    error = jnp.abs(funcnet.nn.sigmoid(k * d) - funcnet.nn.step(d))
    bound = funcnet.nn.sigmoid(jnp.float32(-k * delta))
    return float(jnp.max(error)), float(bound)


def bump(x: jax.Array, a: float, b: float, k: float) -> jax.Array:
    """``σ(k(x − a)) − σ(k(x − b))``, close to the indicator of ``[a, b)`` for large `k`."""
    return funcnet.nn.sigmoid(k * (x - a)) - funcnet.nn.sigmoid(k * (x - b))


def bump_error(k: float, delta: float = DELTA) -> tuple[float, float]:
    """Max of ``|bump(x) − 1[a ≤ x < b]|`` on ``[−2, 2]`` at distance ≥ δ from a and b, and the
    bound ``2σ(−kδ)``."""
    a, b = BUMP
    x = jnp.linspace(LO, HI, TEST_POINTS)
    x = x[(jnp.abs(x - a) >= delta) & (jnp.abs(x - b) >= delta)]
    indicator = ((x >= a) & (x < b)).astype(x.dtype)
    error = jnp.abs(bump(x, a, b, k) - indicator)
    return float(jnp.max(error)), float(2 * funcnet.nn.sigmoid(jnp.float32(-k * delta)))


def network(width: int, first: funcnet.nn.Layer | None = None) -> funcnet.nn.Layer:
    """``x ↦ w₂ᵀ σ(W₁x + b₁) + b₂``: inputs ``(batch, 1)``, outputs ``(batch, 1)``."""
    first = funcnet.nn.dense(width) if first is None else first
    return funcnet.nn.serial(first, funcnet.nn.sigmoid, funcnet.nn.dense(1))


def staircase_cells(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Edges ``t₀ … tₙ`` and centres ``c₀ … cₙ₋₁`` of n equal cells on ``[LO, HI]``; the outer
    edges move one cell outward so that the interval's ends are not edges."""
    h = (HI - LO) / n
    edges = LO + h * np.arange(n + 1)
    centres = edges[:-1] + h / 2
    edges[0], edges[-1] = LO - h, HI + h
    return edges, centres


def staircase_params(n: int) -> dict:
    """The params of `network(n + 1)` that make it the staircase of n bumps: unit i is the
    step σ(k(x − tᵢ)), with ``k = SHARPNESS / h``, weighted by the change of height at tᵢ."""
    edges, centres = staircase_cells(n)
    k = SHARPNESS * n / (HI - LO)
    heights = np.asarray(target(jnp.asarray(centres)))
    w2 = np.diff(heights, prepend=0.0, append=0.0)  # f(c₀), f(c₁) − f(c₀), …, −f(cₙ₋₁)
    return {
        "dense_0": {"w": jnp.full((1, n + 1), k, jnp.float32), "b": jnp.asarray(-k * edges)},
        "sigmoid_1": {},
        "dense_2": {"w": jnp.asarray(w2[:, None], jnp.float32), "b": jnp.zeros(1)},
    }


def staircase(n: int, x: jax.Array) -> jax.Array:
    """The staircase of n bumps at `x` of shape ``(batch, 1)``, evaluated as a network."""
    y, _ = network(n + 1).apply(staircase_params(n), {}, x)
    return y


def train(width: int, steps: int, seeds: int, learning_rate: float) -> dict:
    """Trains `network(width)` from `seeds` random starts at once; returns the stacked params."""
    # The default init puts every unit's centre −b/w at 0; spread the centres over the
    # interval instead (w ~ N(0, 4²), b ~ U(−8, 8)), as part (b) spreads the steps by hand.
    first = funcnet.nn.dense(
        width,
        w_init=funcnet.nn.initializers.normal(4.0),
        b_init=funcnet.nn.initializers.uniform(8.0),
    )
    model = network(width, first)
    x = jnp.linspace(LO, HI, TRAIN_POINTS)[:, None]
    y = target(x)
    keys = jax.random.split(jax.random.key(0), seeds)
    params = jax.vmap(lambda key: model.init(key, x.shape)[1])(keys)
    optimizer = funcnet.optim.adam(funcnet.optim.cosine_decay_schedule(learning_rate, steps))

    def loss(params):
        prediction, _ = model.apply(params, {}, x)
        return jnp.mean((prediction - y) ** 2)

    def step(carry, _):
        params, opt_state = carry
        grads = jax.grad(loss)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (funcnet.optim.apply_updates(params, updates), opt_state), None

    @jax.jit
    @jax.vmap
    def fit(params):
        (params, _), _ = jax.lax.scan(step, (params, optimizer.init(params)), length=steps)
        return params

    return fit(params)


def grid_errors(width: int, params: dict) -> tuple[jax.Array, jax.Array]:
    """RMS and max error of each of the stacked networks on the test grid."""
    x = jnp.linspace(LO, HI, TEST_POINTS)[:, None]
    predictions = jax.vmap(lambda p: network(width).apply(p, {}, x)[0])(params)
    error = predictions - target(x)
    return jnp.sqrt(jnp.mean(error**2, axis=(1, 2))), jnp.max(jnp.abs(error), axis=(1, 2))


def plot(results: dict, fits: dict, path: pathlib.Path) -> None:
    x = jnp.linspace(LO, HI, TEST_POINTS)
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5), layout="constrained")

    ax = axes[0, 0]
    ax.plot(x, funcnet.nn.step(x - STEP_AT), "k", lw=2, label="step(x − a)")
    for k in results["step_error"]:
        ax.plot(x, funcnet.nn.sigmoid(k * (x - STEP_AT)), lw=1, label=f"σ({k:g}(x − a))")
    ax.set_title(f"(a) a steep sigmoid is a step (a = {STEP_AT})")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.legend(fontsize=8)

    ax = axes[0, 1]
    ax.plot(x, target(x), "k", lw=2, label="f(x) = sin(3x) + 0.3x²")
    a, b = BUMP
    ax.plot(x, bump(x, a, b, 50.0), "C7", lw=1, label=f"one bump on [{a}, {b}), k = 50")
    bumps = list(results["staircase_error"])
    for n in bumps[1:-1:2] or bumps:
        ax.plot(x, staircase(n, x[:, None])[:, 0], lw=1, label=f"{n} bumps")
    ax.set_title("(b) bumps from pairs of steps, summed into a staircase")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.legend(fontsize=8)

    ax = axes[1, 0]
    ax.plot(x, target(x), "k", lw=2, label="f(x)")
    for width, y in fits.items():
        ax.plot(x, y, lw=1, label=f"width {width}")
    ax.set_title("(c) y = w₂ᵀ σ(W₁x + b₁) + b₂ trained by Adam")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.legend(fontsize=8)

    ax = axes[1, 1]
    units = [n + 1 for n in bumps]
    ax.loglog(units, list(results["staircase_error"].values()), "o-", label="staircase (set)")
    widths = list(results["network_max"])
    ax.loglog(widths, list(results["network_max"].values()), "s-", label="network (trained)")
    ticks = 2 ** np.arange(1, int(np.ceil(np.log2(max(units + widths)))) + 1)
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.xaxis.set_minor_formatter(plt.NullFormatter())
    ax.set_xlabel("hidden units")
    ax.set_ylabel("max |error| on [−2, 2]")
    ax.set_title("error against the number of sigmoids")
    ax.legend(fontsize=8)

    fig.suptitle("Universal approximation with sigmoids: steps, bumps, staircases, networks")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs"))
    parser.add_argument("--ks", type=float, nargs="+", default=[1, 10, 100, 1000])
    parser.add_argument("--bumps", type=int, nargs="+", default=[4, 8, 16, 32, 64])
    parser.add_argument("--widths", type=int, nargs="+", default=[2, 4, 8, 16, 32])
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--learning-rate", type=float, default=3e-2)
    args = parser.parse_args(argv)
    results = {name: {} for name in ("step_error", "step_bound", "bump_error", "bump_bound")}

    print(f"(a) steps: max |σ(k(x − a)) − step(x − a)| over |x − a| ≥ δ = {DELTA}")
    print(f"    {'k':>6}  {'error':>10}  {'σ(−kδ)':>10}")
    for k in args.ks:
        error, bound = step_error(k)
        results["step_error"][k], results["step_bound"][k] = error, bound
        print(f"    {k:6g}  {error:10.3e}  {bound:10.3e}")

    a, b = BUMP
    print(f"\n(b) bump on [{a}, {b}): max |bump − indicator| at distance ≥ δ from a and b")
    print(f"    {'k':>6}  {'error':>10}  {'2σ(−kδ)':>10}")
    for k in args.ks:
        error, bound = bump_error(k)
        results["bump_error"][k], results["bump_bound"][k] = error, bound
        print(f"    {k:6g}  {error:10.3e}  {bound:10.3e}")

    x = jnp.linspace(LO, HI, TEST_POINTS)
    lipschitz = float(jnp.max(jnp.abs(jax.vmap(jax.grad(target))(x))))
    results["lipschitz"] = lipschitz
    results["staircase_error"], results["staircase_bound"] = {}, {}
    print(f"\n    staircase of n bumps for f(x) = sin(3x) + 0.3x², k = {SHARPNESS:g}/h")
    print(f"    {'n':>6}  {'max error':>10}  {'L·h/2':>10}")
    for n in args.bumps:
        error = float(jnp.max(jnp.abs(staircase(n, x[:, None])[:, 0] - target(x))))
        bound = lipschitz * (HI - LO) / n / 2
        results["staircase_error"][n], results["staircase_bound"][n] = error, bound
        print(f"    {n:6d}  {error:10.3e}  {bound:10.3e}")

    print(
        f"\n(c) network y = w₂ᵀ σ(W₁x + b₁) + b₂, {args.steps} Adam steps, "
        f"best of {args.seeds} starts"
    )
    print(f"    {'width':>6}  {'RMS error':>10}  {'max error':>10}")
    results["network_rms"], results["network_max"], fits = {}, {}, {}
    for width in args.widths:
        params = train(width, args.steps, args.seeds, args.learning_rate)
        rms, worst = grid_errors(width, params)
        best = int(jnp.argmin(rms))
        results["network_rms"][width] = float(rms[best])
        results["network_max"][width] = float(worst[best])
        best_params = jax.tree.map(lambda leaf, i=best: leaf[i], params)
        fits[width] = network(width).apply(best_params, {}, x[:, None])[0][:, 0]
        print(f"    {width:6d}  {rms[best]:10.3e}  {worst[best]:10.3e}")

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "universal_approximation.png"
    plot(results, fits, path)
    print(f"\nsaved {path}")
    return results


if __name__ == "__main__":
    main()
