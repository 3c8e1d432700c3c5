"""Forward or reverse mode: where each wins as the input and output dimensions grow.

For f: ℝⁿ → ℝᵐ the full Jacobian costs n Jacobian-vector products in forward mode
(`jax.jacfwd`, one column each) and m vector-Jacobian products in reverse mode
(`jax.jacrev`, one row each). One forward pass `jax.jvp(f, (x,), (e_j,))` pushes the tangent
e_j through f and gives the column J·e_j; one backward pass of the pullback from `jax.vjp`
takes the cotangent e_i back to the row e_iᵀJ. The script first assembles a small Jacobian
both ways, column by column and row by row, and checks it against `jax.jacfwd`.

Each product costs a small multiple of one evaluation of f, so forward mode should win when
n < m and reverse mode when n > m, with the boundary near the diagonal n = m. Reverse mode
also stores the forward pass, which tilts the boundary a little in forward mode's favour.

The function is a two-layer network f(x) = W₂ tanh(W₁ x) with a hidden width of 256. This
script times both modes on a grid of (n, m), prints the table with the mode
`funcnet.diff.jacobian(mode="auto")` picks, and saves `forward_vs_reverse.png`: the
time ratio over the grid, and the times along one row and one column of it.

Run: python examples/forward_vs_reverse.py [--out runs/] [--sizes 4 16 64 256 1024]
"""

import argparse
import math
import pathlib
import statistics
import time

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import NullLocator

import funcnet.diff as fd

HIDDEN = 256


def network(n: int, m: int, seed: int = 0):
    """f(x) = W₂ tanh(W₁ x) from ℝⁿ to ℝᵐ, with a point x of shape (n,)."""
    rng = np.random.default_rng(seed)
    w1 = jnp.asarray(rng.normal(size=(HIDDEN, n)) / math.sqrt(n), jnp.float32)
    w2 = jnp.asarray(rng.normal(size=(m, HIDDEN)) / math.sqrt(HIDDEN), jnp.float32)
    x = jnp.asarray(rng.normal(size=n), jnp.float32)
    return lambda x: w2 @ jnp.tanh(w1 @ x), x


def jacobian_by_columns(f, x: jax.Array) -> jax.Array:
    """J of shape (m, n), one forward pass per column: J·e_j = jax.jvp(f, (x,), (e_j,))[1]."""
    columns = [jax.jvp(f, (x,), (e,))[1] for e in jnp.eye(x.shape[0], dtype=x.dtype)]
    return jnp.stack(columns, axis=1)


def jacobian_by_rows(f, x: jax.Array) -> jax.Array:
    """J of shape (m, n), one backward pass per row: e_iᵀJ = pullback(e_i).

    `jax.vjp` runs f once and keeps what the backward passes need; each call of the
    pullback is then one backward pass.
    """
    y, pullback = jax.vjp(f, x)
    rows = [pullback(e)[0] for e in jnp.eye(y.shape[0], dtype=y.dtype)]
    return jnp.stack(rows, axis=0)


def show_products(n: int = 3, m: int = 2) -> float:
    """Print a small Jacobian assembled from n jvps and from m vjps.

    Returns the largest absolute difference of either assembly from `jax.jacfwd`.
    """
    f, x = network(n, m)
    by_columns, by_rows = jacobian_by_columns(f, x), jacobian_by_rows(f, x)
    reference = jax.jacfwd(f)(x)
    error = max(float(jnp.max(jnp.abs(j - reference))) for j in (by_columns, by_rows))
    print(f"Jacobian of f: ℝ{n} → ℝ{m} from {n} jvps (columns J·e_j) and {m} vjps (rows e_iᵀJ):")
    for i, row in enumerate(by_rows.tolist()):
        print(f"  row {i}: " + "  ".join(f"{v:+.5f}" for v in row))
    print(f"  max |difference| of both from jax.jacfwd: {error:.1e}\n")
    return error


def seconds(fn, x, repeats: int, min_time: float = 0.05) -> float:
    """Median seconds per call over `repeats` batches of calls lasting about `min_time`."""
    jax.block_until_ready(fn(x))
    start = time.perf_counter()
    jax.block_until_ready(fn(x))
    calls = max(1, math.ceil(min_time / max(time.perf_counter() - start, 1e-7)))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            out = fn(x)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - start) / calls)
    return statistics.median(times)


def measure(sizes: list[int], repeats: int) -> list[dict]:
    """Time jacfwd, jacrev and `funcnet.diff.jacobian` for every (n, m) in sizes × sizes.

    `auto` is the mode `jacobian(mode="auto")` picks: forward when n < m, else reverse.
    """
    rows = []
    for n in sizes:
        for m in sizes:
            f, x = network(n, m)
            fwd = seconds(jax.jit(jax.jacfwd(f)), x, repeats)
            rev = seconds(jax.jit(jax.jacrev(f)), x, repeats)
            auto = seconds(jax.jit(lambda x, f=f: fd.jacobian(f, x)), x, repeats)
            rows.append(
                {
                    "n": n,
                    "m": m,
                    "fwd_ms": 1e3 * fwd,
                    "rev_ms": 1e3 * rev,
                    "auto_ms": 1e3 * auto,
                    "faster": "fwd" if fwd < rev else "rev",
                    "auto": "fwd" if n < m else "rev",
                }
            )
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"Jacobian of f: ℝⁿ → ℝᵐ, f(x) = W₂ tanh(W₁ x), hidden {HIDDEN}, float32")
    print(
        f"{'n':>6} {'m':>6} {'jacfwd ms':>10} {'jacrev ms':>10} {'fwd/rev':>8}  faster"
        f"  {'auto':<5}{'auto ms':>9}"
    )
    for r in rows:
        ratio = r["fwd_ms"] / r["rev_ms"]
        print(
            f"{r['n']:>6} {r['m']:>6} {r['fwd_ms']:>10.3f} {r['rev_ms']:>10.3f} {ratio:>8.2f}"
            f"  {r['faster']:<6}  {r['auto']:<5}{r['auto_ms']:>9.3f}"
        )
    agree = sum(r["faster"] == r["auto"] for r in rows)
    worst = max(r[f"{r['auto']}_ms"] / min(r["fwd_ms"], r["rev_ms"]) for r in rows)
    print(
        f"auto mode picks the faster mode in {agree} of {len(rows)} cases; "
        f"its pick is at worst {worst:.2f}× the faster one"
    )


def plot(rows: list[dict], sizes: list[int], path: pathlib.Path) -> None:
    k = len(sizes)
    ratio = np.zeros((k, k))
    for r in rows:
        ratio[sizes.index(r["m"]), sizes.index(r["n"])] = r["fwd_ms"] / r["rev_ms"]
    log_ratio = np.log2(ratio)
    bound = max(np.abs(log_ratio).max(), 1.0)

    fig, (ax_map, ax_n, ax_m) = plt.subplots(
        1, 3, figsize=(17, 5), gridspec_kw={"width_ratios": [1.3, 1, 1]}
    )
    image = ax_map.imshow(log_ratio, origin="lower", cmap="RdBu_r", vmin=-bound, vmax=bound)
    ax_map.plot([-0.5, k - 0.5], [-0.5, k - 0.5], "k--", lw=1)
    for i in range(k):
        for j in range(k):
            # White on the dark ends of the colour map, black on its pale middle.
            dark = abs(log_ratio[i, j]) > 0.55 * bound
            ax_map.text(
                j,
                i,
                f"{ratio[i, j]:.2g}×",
                ha="center",
                va="center",
                fontsize=max(7, 13 - k),
                fontweight="bold",
                color="white" if dark else "black",
            )
    ax_map.set_xticks(range(k), sizes)
    ax_map.set_yticks(range(k), sizes)
    ax_map.set_xlabel("input dimension n")
    ax_map.set_ylabel("output dimension m")
    ax_map.set_title("time jacfwd / jacrev; dashed: n = m\nblue: forward wins, red: reverse wins")
    fig.colorbar(image, ax=ax_map, label="log₂(jacfwd / jacrev)")

    middle = sizes[k // 2]
    by = {(r["n"], r["m"]): r for r in rows}
    for ax, varying, fixed in ((ax_n, "n", "m"), (ax_m, "m", "n")):
        for mode, color in (("fwd", "C0"), ("rev", "C3")):
            key = (lambda v: (v, middle)) if varying == "n" else (lambda v: (middle, v))
            times = [by[key(v)][f"{mode}_ms"] for v in sizes]
            ax.loglog(sizes, times, color=color, marker="o", label=f"jac{mode}")
        ax.set_xticks(sizes, [str(v) for v in sizes])  # the sizes measured, no 10ˣ minors
        ax.xaxis.set_minor_locator(NullLocator())
        ax.axvline(middle, color="grey", lw=0.8, ls=":")
        ax.set_xlabel(f"{varying} ({fixed} = {middle})")
        ax.set_ylabel("ms per Jacobian")
        ax.set_title(f"{fixed} fixed at {middle}, {varying} grows")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[4, 16, 64, 256, 1024])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    sizes = sorted(args.sizes)
    show_products()
    rows = measure(sizes, args.repeats)
    print_table(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "forward_vs_reverse.png"
    plot(rows, sizes, path)
    print(f"saved {path}")
    return rows


if __name__ == "__main__":
    main()
