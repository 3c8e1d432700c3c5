"""Hessian spectra (Lanczos, power iteration, Hutchinson, SLQ) against numpy.linalg.eigh."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
from jax.flatten_util import ravel_pytree

import funcnet.diff as fd
from funcnet.diff.spectrum import _lanczos


def stacked(batch, num_batches):
    return jax.tree.map(lambda a: a.reshape(num_batches, -1, *a.shape[1:]), batch)


def loss_and_batches(problem, use_batches):
    """The same Hessian two ways: the loss on all data, or its mean over 4 equal batches."""
    if use_batches:
        return problem.batch_loss, stacked(problem.batch, 4)
    return problem.loss, None


@pytest.mark.parametrize(
    ("use_batches", "num_iters"),
    [(False, 51), (False, 30), (True, 30)],
    ids=["closure-full", "closure-krylov30", "batches-krylov30"],
)
def test_lanczos_top5_match_eigh(mlp_problem, use_batches, num_iters):
    h = mlp_problem.hessian
    exact = np.linalg.eigvalsh(h)[::-1][:5]
    f, batches = loss_and_batches(mlp_problem, use_batches)
    result = fd.hessian_eigs(
        f, mlp_problem.params, key=jax.random.key(0), k=5, num_iters=num_iters, batches=batches
    )
    np.testing.assert_allclose(result.eigenvalues, exact, rtol=1e-4)
    vectors = jax.vmap(lambda v: ravel_pytree(v)[0])(result.eigenvectors)
    assert vectors.shape == (5, h.shape[0])
    np.testing.assert_allclose(vectors @ vectors.T, np.eye(5), atol=1e-8)
    residuals = np.linalg.norm(vectors @ h - result.eigenvalues[:, None] * vectors, axis=1)
    assert residuals.max() < 1e-4 * np.abs(exact).max()


def test_power_iteration_matches_eigh_by_magnitude(mlp_problem):
    h = mlp_problem.hessian
    exact = np.linalg.eigvalsh(h)
    exact = exact[np.argsort(-np.abs(exact))][:3]
    result = fd.hessian_eigs(
        mlp_problem.loss,
        mlp_problem.params,
        key=jax.random.key(1),
        k=3,
        method="power",
        num_iters=2000,
        tol=1e-13,
    )
    np.testing.assert_allclose(result.eigenvalues, exact, rtol=1e-4)
    vectors = jax.vmap(lambda v: ravel_pytree(v)[0])(result.eigenvectors)
    residuals = np.linalg.norm(vectors @ h - result.eigenvalues[:, None] * vectors, axis=1)
    assert residuals.max() < 1e-2 * np.abs(exact).max()


def quadratic(diagonal, rng):
    """f(θ) = ½ θᵀAθ with A = Q diag(d) Qᵀ, a random rotation Q; returns (f, params, A)."""
    q, _ = np.linalg.qr(rng.normal(size=(len(diagonal), len(diagonal))))
    a = jnp.asarray(q @ np.diag(diagonal) @ q.T)
    params = {"u": jnp.asarray(rng.normal(size=(2, 3))), "v": jnp.asarray(rng.normal(size=6))}
    f = lambda p: 0.5 * ravel_pytree(p)[0] @ a @ ravel_pytree(p)[0]
    return f, params, np.asarray(a)


def test_lanczos_finds_repeated_eigenvalues(x64):
    # A Krylov space sees one copy of each distinct eigenvalue; the restart finds the rest.
    diagonal = np.array([5.0, 5.0, 5.0, 3.0, 2.0, 2.0, 1.0, 0.5, 0.0, 0.0, -1.0, -1.0])
    f, params, _ = quadratic(diagonal, np.random.default_rng(0))
    result = fd.hessian_eigs(f, params, key=jax.random.key(2), k=12, num_iters=12)
    np.testing.assert_allclose(result.eigenvalues, np.sort(diagonal)[::-1], atol=1e-10)


def test_legacy_and_typed_keys_agree(mlp_problem):
    f, params = mlp_problem.loss, mlp_problem.params
    typed = fd.hessian_eigs(f, params, key=jax.random.key(3), num_iters=51)
    legacy = fd.hessian_eigs(f, params, key=jax.random.PRNGKey(3), num_iters=51)
    np.testing.assert_allclose(typed.eigenvalues, legacy.eigenvalues, rtol=1e-12)


def test_spectra_run_inside_jit(mlp_problem):
    h = mlp_problem.hessian

    @jax.jit
    def spectra(params, key):
        eigs = fd.hessian_eigs(mlp_problem.loss, params, key=key, k=2)
        trace = fd.hessian_trace(mlp_problem.loss, params, key=key, num_samples=10)
        density = fd.hessian_density(mlp_problem.loss, params, key=key, num_iters=20)
        return eigs.eigenvalues, trace.estimate, density.weights.sum()

    values, trace, weight = spectra(mlp_problem.params, jax.random.key(4))
    np.testing.assert_allclose(values, np.linalg.eigvalsh(h)[::-1][:2], rtol=1e-8)
    assert np.isfinite(trace)
    np.testing.assert_allclose(weight, 1.0, rtol=1e-12)


@pytest.mark.parametrize("use_batches", [False, True], ids=["closure", "batches"])
def test_hutchinson_within_its_standard_error(mlp_problem, use_batches):
    h = mlp_problem.hessian
    f, batches = loss_and_batches(mlp_problem, use_batches)
    num_samples = 400
    result = fd.hessian_trace(
        f, mlp_problem.params, key=jax.random.key(5), num_samples=num_samples, batches=batches
    )
    assert abs(result.estimate - np.trace(h)) < 3 * result.stderr
    # The variance of one Rademacher sample is 2 Σ_{i≠j} H_ij².
    expected_stderr = np.sqrt(2 * (np.sum(h**2) - np.sum(np.diag(h) ** 2)) / num_samples)
    np.testing.assert_allclose(result.stderr, expected_stderr, rtol=0.2)


def test_hutchinson_is_exact_for_a_diagonal_hessian(x64):
    weights = jnp.linspace(0.5, 3.0, 7)
    f = lambda p: jnp.sum(weights * p["x"] ** 2) + jnp.sum(jnp.cosh(p["y"]))
    params = {"x": jnp.ones(7), "y": jnp.linspace(-1.0, 1.0, 4)}
    exact = float(2 * weights.sum() + jnp.cosh(params["y"]).sum())
    result = fd.hessian_trace(f, params, key=jax.random.key(6), num_samples=8)
    np.testing.assert_allclose(result.estimate, exact, rtol=1e-12)
    assert result.stderr < 1e-12


@pytest.mark.parametrize("num_iters", [3, 8])
def test_lanczos_quadrature_is_exact_for_low_degree_moments(x64, num_iters):
    # m Lanczos steps from v give a Gauss rule: Σ τ² θᵖ = vᵀHᵖv/‖v‖² for p < 2m.
    rng = np.random.default_rng(7)
    diagonal = rng.uniform(-1.0, 2.0, size=40)
    _, _, a = quadratic(diagonal, rng)
    v = rng.normal(size=40)
    tridiagonal, basis = jax.jit(_lanczos, static_argnums=(0, 2))(
        lambda w: jnp.asarray(a) @ w, jnp.asarray(v), num_iters
    )
    nodes, coords = np.linalg.eigh(np.asarray(tridiagonal))
    weights = coords[0] ** 2
    np.testing.assert_allclose(basis @ basis.T, np.eye(num_iters), atol=1e-12)
    u = v / np.linalg.norm(v)
    for p in range(2 * num_iters):
        exact = u @ np.linalg.matrix_power(a, p) @ u
        np.testing.assert_allclose(weights @ nodes**p, exact, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("use_batches", [False, True], ids=["closure", "batches"])
def test_slq_moments_match_the_spectrum(mlp_problem, use_batches):
    h = mlp_problem.hessian
    eigenvalues = np.linalg.eigvalsh(h)
    n = h.shape[0]
    f, batches = loss_and_batches(mlp_problem, use_batches)
    density = fd.hessian_density(
        f, mlp_problem.params, key=jax.random.key(8), num_iters=20, num_probes=64, batches=batches
    )
    nodes, weights = np.asarray(density.nodes), np.asarray(density.weights)
    assert nodes.shape == weights.shape == (64, 20)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-12)
    assert weights.min() >= 0
    significant = weights > 1e-12
    assert nodes[significant].min() >= eigenvalues.min() - 1e-8
    assert nodes[significant].max() <= eigenvalues.max() + 1e-8
    # E over probes of n·Σ τ² θᵖ is tr(Hᵖ): compare within three standard errors.
    for p in (1, 2, 3):
        samples = n * np.sum(weights * nodes**p, axis=1)
        stderr = samples.std(ddof=1) / np.sqrt(len(samples))
        assert abs(samples.mean() - np.sum(eigenvalues**p)) < 3 * stderr + 1e-10


def test_density_on_grid_integrates_to_one_and_peaks_at_eigenvalues(x64):
    diagonal = np.array([-1.0] * 4 + [2.0] * 8)
    f, params, _ = quadratic(diagonal, np.random.default_rng(9))
    density = fd.hessian_density(f, params, key=jax.random.key(9), num_iters=12, num_probes=16)
    grid = jnp.linspace(-3.0, 4.0, 2001)
    phi = np.asarray(fd.density_on_grid(density, grid, sigma=0.05))
    trapezoid = scipy.integrate.trapezoid  # numpy's is np.trapz before numpy 2, then np.trapezoid
    np.testing.assert_allclose(trapezoid(phi, np.asarray(grid)), 1.0, rtol=1e-6)
    near = lambda t: np.abs(np.asarray(grid) - t) < 0.25
    mass = lambda t: trapezoid(phi * near(t), np.asarray(grid))
    # Each eigenvalue carries mass (its multiplicity)/n in expectation.
    np.testing.assert_allclose([mass(-1.0), mass(2.0)], [4 / 12, 8 / 12], atol=0.08)


def test_spectra_reject_bad_arguments(mlp_problem):
    f, params = mlp_problem.loss, mlp_problem.params
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="k must be"):
        fd.hessian_eigs(f, params, key=key, k=52)
    with pytest.raises(ValueError, match="method"):
        fd.hessian_eigs(f, params, key=key, method="arnoldi")
    with pytest.raises(ValueError, match="num_samples"):
        fd.hessian_trace(f, params, key=key, num_samples=1)
    x, y = mlp_problem.batch
    with pytest.raises(ValueError, match="leading"):
        fd.hessian_trace(mlp_problem.batch_loss, params, key=key, batches=(x[:20], y))
