"""The Hessian spectrum of a small MLP on the digits, before and after training.

A 64 → 32 → 10 ReLU network (2,410 parameters; `--hidden` sets the 32) is trained with Adam
on the 8×8 digits.
At initialisation and after training, the Hessian of the training loss (the mean over the
training set, accumulated batch by batch) is probed without ever being formed:

- `hessian_eigs`: the top eigenvalues by Lanczos, and the largest by power iteration;
- `hessian_trace`: Hutchinson's estimate of tr(H) with its standard error;
- `hessian_density`: the eigenvalue density by stochastic Lanczos quadrature.

With `--dense-check` (default on) the 2,410 × 2,410 Hessian is also formed and diagonalised
with `numpy.linalg.eigh` to show the matrix-free figures agree. The density plot goes to
`hessian_spectrum.png` in `--out`: a bulk of eigenvalues near zero and a few outliers well
separated from it, with the exact density (eigh, same Gaussian smoothing) overlaid.

Run: python examples/hessian_spectrum.py [--out runs/] [--steps 500] [--hidden 32]
[--no-dense-check]
"""

import argparse
import functools
import pathlib
import time

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

import funcnet
import funcnet.diff as fd

NUM_BATCHES = 3  # the training set (1,437 digits) is 3 batches of 479
HIDDEN = 32


def model(hidden: int = HIDDEN) -> funcnet.nn.Layer:
    return funcnet.nn.serial(funcnet.nn.dense(hidden), funcnet.nn.relu, funcnet.nn.dense(10))


def batch_loss(params: dict, batch: tuple[jax.Array, jax.Array], hidden: int = HIDDEN) -> jax.Array:
    """Mean softmax cross-entropy of the network on one batch `(x, labels)`."""
    x, y = batch
    logits, _ = model(hidden).apply(params, {}, x)
    return funcnet.losses.softmax_cross_entropy(logits, y)


def train(
    params: dict, data: funcnet.data.Split, steps: int, learning_rate: float, loss=batch_loss
) -> dict:
    """Full-batch Adam on the training set."""
    optimizer = funcnet.optim.adam(learning_rate)

    @jax.jit
    def step(params, opt_state):
        grads = jax.grad(loss)(params, (data.x_train, data.y_train))
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return funcnet.optim.apply_updates(params, updates), opt_state

    opt_state = optimizer.init(params)
    for _ in range(steps):
        params, opt_state = step(params, opt_state)
    return params


def accuracy(params: dict, x: jax.Array, y: jax.Array, hidden: int = HIDDEN) -> float:
    logits, _ = model(hidden).apply(params, {}, x)
    return float(funcnet.losses.accuracy(logits, y))


def spectrum(
    params: dict, batches: tuple, key: jax.Array, dense_check: bool, loss=batch_loss
) -> dict:
    """Top eigenvalues, trace and SLQ density of the training-loss Hessian `loss`."""
    k_eigs, k_power, k_trace, k_density = jax.random.split(key, 4)
    start = time.perf_counter()
    eigs = fd.hessian_eigs(loss, params, key=k_eigs, k=5, batches=batches, num_iters=100)
    power = fd.hessian_eigs(
        loss, params, key=k_power, k=1, batches=batches, method="power", num_iters=500
    )
    trace = fd.hessian_trace(loss, params, key=k_trace, num_samples=100, batches=batches)
    density = fd.hessian_density(
        loss, params, key=k_density, num_iters=100, num_probes=4, batches=batches
    )
    jax.block_until_ready(density)
    result = {
        "top": np.asarray(eigs.eigenvalues),
        "power": float(power.eigenvalues[0]),
        "trace": float(trace.estimate),
        "trace_stderr": float(trace.stderr),
        "density": density,
        "seconds": time.perf_counter() - start,
    }
    if dense_check:
        # The mean over equal batches is the loss on the whole training set.
        full = jax.tree.map(lambda a: a.reshape(-1, *a.shape[2:]), batches)
        matrix = jax.jit(lambda p: fd.flat_hessian(lambda q: loss(q, full), p)[0])(params)
        exact = np.linalg.eigvalsh(np.asarray(matrix, np.float64))
        result["exact_top"] = exact[::-1][:5]
        result["exact_trace"] = float(exact.sum())
        result["exact"] = exact
    return result


def report(name: str, s: dict) -> None:
    print(f"\n{name}: matrix-free spectra in {s['seconds']:.1f} s")
    print("  top-5 eigenvalues (Lanczos): " + "  ".join(f"{v:9.4f}" for v in s["top"]))
    if "exact_top" in s:
        print("  top-5 eigenvalues (eigh):    " + "  ".join(f"{v:9.4f}" for v in s["exact_top"]))
    print(f"  largest |eigenvalue| (power iteration): {s['power']:.4f}")
    line = f"  trace (Hutchinson, 100 probes): {s['trace']:.4f} ± {s['trace_stderr']:.4f}"
    if "exact_trace" in s:
        line += f"   exact {s['exact_trace']:.4f}"
    print(line)


def plot(spectra: dict[str, dict], path: pathlib.Path, hidden: int = HIDDEN) -> None:
    fig, axes = plt.subplots(1, len(spectra), figsize=(6 * len(spectra), 4.5))
    for ax, (name, s) in zip(np.atleast_1d(axes), spectra.items(), strict=True):
        nodes = np.asarray(s["density"].nodes)
        low, high = nodes.min(), nodes.max()
        sigma = 0.005 * (high - low)
        grid = jnp.linspace(low - 0.05 * (high - low), high + 0.05 * (high - low), 2000)
        phi = np.asarray(fd.density_on_grid(s["density"], grid, sigma=sigma))
        ax.semilogy(grid, np.maximum(phi, 1e-8), color="C0", label="SLQ density (4 probes)")
        if "exact" in s:
            z = (np.asarray(grid)[:, None] - s["exact"][None]) / sigma
            exact = np.exp(-0.5 * z**2).mean(axis=1) / (sigma * np.sqrt(2 * np.pi))
            ax.semilogy(grid, np.maximum(exact, 1e-8), "k--", lw=0.8, label="eigh, same smoothing")
            ax.plot(
                s["exact_top"],
                np.full(5, 1e-7),
                "v",
                color="C3",
                label="top-5 eigenvalues (eigh)",
            )
        ax.plot(s["top"], np.full(5, 3e-7), "^", color="C2", label="top-5 eigenvalues (Lanczos)")
        ax.set_ylim(5e-9, None)
        ax.set_xlabel("eigenvalue")
        ax.set_ylabel("density")
        ax.set_title(f"{name}: tr(H) ≈ {s['trace']:.2f} ± {s['trace_stderr']:.2f}")
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(f"Hessian eigenvalue density of the training loss, 64 → {hidden} → 10 ReLU MLP")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs"))
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--learning-rate", type=float, default=1e-2)
    parser.add_argument("--hidden", type=int, default=HIDDEN, help="hidden units (quick: 8)")
    parser.add_argument("--dense-check", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args(argv)

    data = funcnet.data.digits()
    n_train = data.x_train.shape[0] // NUM_BATCHES * NUM_BATCHES
    batches = (
        data.x_train[:n_train].reshape(NUM_BATCHES, -1, data.x_train.shape[1]),
        data.y_train[:n_train].reshape(NUM_BATCHES, -1),
    )
    key = jax.random.key(0)
    init_key, spectra_key = jax.random.split(key)
    _, params, _ = model(args.hidden).init(init_key, data.x_train.shape)
    n = sum(leaf.size for leaf in jax.tree.leaves(params))
    print(f"MLP 64 → {args.hidden} → 10, {n:,} parameters; {data.x_train.shape[0]} training digits")

    loss = functools.partial(batch_loss, hidden=args.hidden)
    spectra = {"at initialisation": spectrum(params, batches, spectra_key, args.dense_check, loss)}
    params = train(params, data, args.steps, args.learning_rate, loss)
    print(
        f"after {args.steps} Adam steps: train accuracy "
        f"{accuracy(params, data.x_train, data.y_train, args.hidden):.3f}, "
        f"test accuracy {accuracy(params, data.x_test, data.y_test, args.hidden):.3f}"
    )
    spectra["after training"] = spectrum(params, batches, spectra_key, args.dense_check, loss)
    for name, s in spectra.items():
        report(name, s)

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "hessian_spectrum.png"
    plot(spectra, path, args.hidden)
    print(f"\nsaved {path}")
    return spectra


if __name__ == "__main__":
    main()
