"""funcnet.bayes.laplace against laplace-torch on identical weights, and against closed forms.

The reference, tests/data/laplace_torch_0.3.npz, was written by
tests/reference/laplace_reference.py with laplace-torch 0.3 (torch 2.14.1+cpu,
backpack-for-pytorch 1.7.1, curvlinops-for-pytorch 3.0.1, numpy 2.4.6) in a side environment:

    python3 -m venv /tmp/laplaceref
    /tmp/laplaceref/bin/pip install torch --index-url https://download.pytorch.org/whl/cpu
    /tmp/laplaceref/bin/pip install laplace-torch==0.3 numpy
    /tmp/laplaceref/bin/python tests/reference/laplace_reference.py

It holds a classifier 4 → 8 (tanh) → 3 on 40 points and a regressor 1 → 10 (tanh) → 1 on 30
points, in float64, fitted for every subset (all, last layer) × structure (full, diag, kron)
× curvature (GGN, empirical Fisher). Deterministic quantities agree to 1e-6 (the curvature,
the log marginal likelihood on a grid of δ and σ, the marglik-tuned δ, the GLM predictive's
mean and covariance, its probit probabilities); Monte Carlo predictives (10,000 draws on
both sides, torch's and JAX's generators) within a few standard errors.
"""

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnet.bayes as fb
from funcnet import nn

DATA = Path(__file__).resolve().parents[1] / "data" / "laplace_torch_0.3.npz"
TOL = {"rtol": 1e-6, "atol": 1e-6}
CASES = [
    (task, subset, structure, curvature)
    for task in ("class", "reg")
    for subset in ("all", "last_layer")
    for structure in ("full", "diag", "kron")
    for curvature in ("ggn", "ef")
]
SIZES = {"class": (4, 8, 3), "reg": (1, 10, 1)}


@functools.cache
def reference() -> dict:
    with np.load(DATA) as f:
        return dict(f)


def model(task):
    sizes = SIZES[task]
    return nn.serial(nn.dense(sizes[1]), nn.tanh, nn.dense(sizes[2]))


def problem(task):
    ref = reference()
    params = {
        "dense_0": {
            "w": ref[f"{task}/params/dense_0/w"],
            "b": ref[f"{task}/params/dense_0/b"],
        },
        "dense_2": {
            "w": ref[f"{task}/params/dense_2/w"],
            "b": ref[f"{task}/params/dense_2/b"],
        },
        "tanh_1": {},
    }
    layer = model(task)

    def outputs_fn(p, x):
        return layer.apply(p, {}, x)[0]

    return outputs_fn, jax.tree.map(jnp.asarray, params), ref[f"{task}/x"], ref[f"{task}/y"]


def torch_order(task, subset):
    """Indices into funcnet's flat vector, in laplace-torch's order: per layer, the kernel
    transposed to (out, in) and flattened row-major, then the bias. funcnet's order is the
    subset's leaves in flattening order (``b`` before ``w``), each row-major, ``w`` (in, out).
    """
    sizes = SIZES[task]
    layers = ["dense_0", "dense_2"] if subset == "all" else ["dense_2"]
    shapes = {"dense_0": (sizes[0], sizes[1]), "dense_2": (sizes[1], sizes[2])}
    start, where = 0, {}
    for layer in layers:  # funcnet: b then w
        n_in, n_out = shapes[layer]
        where[layer, "b"] = np.arange(start, start + n_out)
        start += n_out
        where[layer, "w"] = np.arange(start, start + n_in * n_out).reshape(n_in, n_out)
        start += n_in * n_out
    return np.concatenate(
        [np.concatenate([where[layer, "w"].T.ravel(), where[layer, "b"]]) for layer in layers]
    )


@functools.cache
def fitted(task, subset, structure, curvature):
    outputs_fn, params, x, y = problem(task)
    ref = reference()
    return fb.laplace(
        outputs_fn,
        params,
        (x, y),
        likelihood="classification" if task == "class" else "regression",
        subset=subset,
        structure=structure,
        curvature=curvature,
        prior_precision=float(ref["prior"]),
        sigma_noise=float(ref["sigma"]) if task == "reg" else 1.0,
    )


def as_laplace_torch(post, task, curvature):
    """laplace-torch's regression empirical Fisher is twice funcnet's (module docstring of
    funcnet.bayes.laplace): its gradients are of ‖y − f‖², halved once."""
    if task != "reg" or curvature != "ef":
        return post
    if post.structure == "kron":
        blocks = tuple(b._replace(g_values=2 * b.g_values) for b in post.curvature)
        return post._replace(curvature=blocks)
    return post._replace(curvature=2 * post.curvature)


def dense_curvature_diagonal(post):
    return jnp.concatenate(
        [
            jnp.outer(
                jnp.einsum("ij,j,ij->i", b.a_vectors, b.a_values, b.a_vectors),
                jnp.einsum("ij,j,ij->i", b.g_vectors, b.g_values, b.g_vectors),
            ).ravel()
            for b in post.curvature
        ]
    )


@pytest.mark.parametrize("case", CASES, ids=["-".join(c) for c in CASES])
def test_matches_laplace_torch(x64, case):
    task, subset, structure, curvature = case
    ref = reference()
    key = "/".join(case) + "/"
    post = as_laplace_torch(fitted(*case), task, curvature)
    order = torch_order(task, subset)
    assert post.subset == (
        ("dense_0/b", "dense_0/w", "dense_2/b", "dense_2/w")
        if subset == "all"
        else ("dense_2/b", "dense_2/w")
    )
    # The curvature sum H, permuted to laplace-torch's order.
    if structure == "full":
        np.testing.assert_allclose(post.curvature[np.ix_(order, order)], ref[key + "h"], **TOL)
    elif structure == "diag":
        np.testing.assert_allclose(post.curvature[order], ref[key + "h"], **TOL)
    else:
        np.testing.assert_allclose(dense_curvature_diagonal(post)[order], ref[key + "h"], **TOL)
        factor = 1 / post.sigma_noise**2
        precision = fb.posterior_precision(post)
        logdet = np.linalg.slogdet(np.asarray(precision))[1]
        np.testing.assert_allclose(logdet, ref[key + "logdet"], **TOL)
        assert factor > 0
    # The evidence on a grid of δ and σ.
    sigmas = ref[f"{task}/lml_sigma"]
    for i, prior in enumerate(ref["lml_prior"]):
        for j, sigma in enumerate(sigmas):
            lml = fb.log_marginal_likelihood(
                post, prior, sigma_noise=sigma if task == "reg" else None
            )
            np.testing.assert_allclose(lml, ref[key + "lml"][i, j], **TOL)
    # δ tuned by the evidence: the same Adam steps on log δ (one compile per case: the GGN
    # cases only, to keep the file fast).
    if curvature == "ggn":
        tuned = fb.optimize_prior_precision(post)
        np.testing.assert_allclose(tuned.prior_precision, ref[key + "prior_opt"][0], **TOL)
    # The GLM predictive.
    x_test = ref[f"{task}/x_test"]
    f_mu, f_var = fb.functional_moments(post, x_test)
    np.testing.assert_allclose(f_mu, ref[key + "f_mu"], **TOL)
    np.testing.assert_allclose(f_var, ref[key + "f_var"], **TOL)


@pytest.mark.parametrize("structure", ["full", "diag", "kron"])
@pytest.mark.parametrize("task", ["class", "reg"])
def test_glm_predictive_matches_laplace_torch(x64, task, structure):
    ref = reference()
    key = f"{task}/all/{structure}/ggn/"
    post = fitted(task, "all", structure, "ggn")
    pred = fb.predictive(post, ref[f"{task}/x_test"])
    if task == "class":
        np.testing.assert_allclose(pred, ref[key + "probit"], **TOL)
    else:
        np.testing.assert_allclose(pred.mean, ref[key + "f_mu"], **TOL)
        model_variance = pred.variance - post.sigma_noise**2  # laplace-torch's: f's alone
        np.testing.assert_allclose(model_variance, ref[key + "f_var"][:, :, 0], **TOL)


@pytest.mark.parametrize("subset", ["all", "last_layer"])
@pytest.mark.parametrize("structure", ["full", "kron"])
def test_monte_carlo_predictives_match_laplace_torch(x64, subset, structure):
    """10,000 draws on each side: the means of the probabilities differ by at most a few
    standard errors (each at most 0.5/√10⁴ = 0.005)."""
    ref = reference()
    key = f"class/{subset}/{structure}/ggn/"
    post = fitted("class", subset, structure, "ggn")
    x_test = ref["class/x_test"]
    glm = fb.predictive(post, x_test, link_approx="mc", n_samples=10_000, key=jax.random.key(1))
    np.testing.assert_allclose(glm, ref[key + "glm_mc"], atol=0.02)
    sampled = fb.predictive(
        post, x_test, pred_type="nn", link_approx="mc", n_samples=10_000, key=jax.random.key(2)
    )
    np.testing.assert_allclose(sampled, ref[key + "nn_mc"], atol=0.02)
    # The draws are close to the probit approximation, but not the same thing.
    assert np.max(np.abs(glm - ref[key + "probit"])) < 0.05


def test_sampled_regression_predictive_matches_laplace_torch(x64):
    ref = reference()
    key = "reg/all/full/ggn/"
    post = fitted("reg", "all", "full", "ggn")
    pred = fb.predictive(
        post, ref["reg/x_test"], pred_type="nn", n_samples=10_000, key=jax.random.key(3)
    )
    variance = pred.variance - post.sigma_noise**2  # laplace-torch's is the model's alone
    np.testing.assert_allclose(variance, ref[key + "nn_var"], rtol=0.1)
    sem = np.sqrt(2 * ref[key + "nn_var"] / 10_000)
    assert np.all(np.abs(pred.mean - ref[key + "nn_mean"]) < 5 * sem)


# ---------------------------------------------------------------------------------------------
# Closed forms.


def linear_regression(n=50, d=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    x -= x.mean(axis=0)  # centred: the kernel-bias cross terms vanish, so kron is exact too
    y = x @ rng.normal(size=d) + 0.7 + 0.4 * rng.normal(size=n)
    return x, y


@pytest.mark.parametrize("structure", ["full", "kron"])
def test_bayesian_linear_regression_is_exact(x64, structure):
    """For a linear model with a Gaussian likelihood the posterior is Gaussian and Laplace at
    the MAP is exact: the precision Φᵀ Φ/σ² + δI, the evidence log N(y; 0, σ²I + ΦΦᵀ/δ), the
    predictive N(φ*ᵀθ̂, φ*ᵀP⁻¹φ* + σ²)."""
    x, y = linear_regression()
    sigma, delta = 0.4, 0.8
    phi = np.concatenate([np.ones((len(x), 1)), x], axis=1)  # funcnet's order: b, then w
    precision = phi.T @ phi / sigma**2 + delta * np.eye(phi.shape[1])
    theta = np.linalg.solve(precision, phi.T @ y / sigma**2)
    params = {"b": jnp.asarray(theta[:1]), "w": jnp.asarray(theta[1:, None])}

    def outputs_fn(p, x):
        return x @ p["w"] + p["b"]

    post = fb.laplace(
        outputs_fn,
        params,
        (x, y),
        likelihood="regression",
        structure=structure,
        prior_precision=delta,
        sigma_noise=sigma,
    )
    np.testing.assert_allclose(fb.posterior_precision(post), precision, rtol=1e-10, atol=1e-10)
    cov = sigma**2 * np.eye(len(x)) + phi @ phi.T / delta
    evidence = -0.5 * (y @ np.linalg.solve(cov, y) + np.linalg.slogdet(2 * np.pi * cov)[1])
    np.testing.assert_allclose(fb.log_marginal_likelihood(post), evidence, rtol=1e-10)
    x_new = np.random.default_rng(1).normal(size=(5, x.shape[1]))
    phi_new = np.concatenate([np.ones((5, 1)), x_new], axis=1)
    pred = fb.predictive(post, x_new)
    variance = np.einsum("bi,ij,bj->b", phi_new, np.linalg.inv(precision), phi_new) + sigma**2
    np.testing.assert_allclose(pred.mean[:, 0], phi_new @ theta, rtol=1e-10)
    np.testing.assert_allclose(pred.variance[:, 0], variance, rtol=1e-10)


def test_ggn_of_a_linear_model_is_the_hessian(x64):
    """Softmax regression is linear in its weights: the Gauss-Newton matrix is the loss's
    exact Hessian, and the diagonal structure its diagonal."""
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(30, 4)), rng.integers(0, 3, 30)
    layer = nn.dense(3)
    _, params, _ = layer.init(jax.random.key(0), (1, 4))

    def outputs_fn(p, x):
        return layer.apply(p, {}, x)[0]

    def loss(flat):
        p = {"b": flat[:3], "w": flat[3:].reshape(4, 3)}
        logits = outputs_fn(p, x)
        return -jnp.sum(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))

    flat = jnp.concatenate([params["b"], params["w"].ravel()])
    hessian = jax.hessian(loss)(flat)
    full = fb.laplace(outputs_fn, params, (x, y))
    diag = fb.laplace(outputs_fn, params, (x, y), structure="diag")
    np.testing.assert_allclose(full.curvature, hessian, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(diag.curvature, np.diag(hessian), rtol=1e-10, atol=1e-12)
    # In batches: the same sums.
    chunked = fb.laplace(outputs_fn, params, (x, y), batch_size=7)
    np.testing.assert_allclose(chunked.curvature, hessian, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(chunked.loss, loss(flat), rtol=1e-12)


def test_tuned_prior_is_a_stationary_point(x64):
    post = fitted("class", "last_layer", "diag", "ggn")
    tuned = fb.optimize_prior_precision(post, n_steps=600)
    slope = jax.grad(lambda s: fb.log_marginal_likelihood(post, jnp.exp(s)))(
        jnp.log(tuned.prior_precision)
    )
    assert abs(slope) < 1e-6
    per_layer = fb.optimize_prior_precision(post, n_steps=600, layerwise=True)
    assert per_layer.prior_precision.shape == (2,)
    assert fb.log_marginal_likelihood(per_layer) >= fb.log_marginal_likelihood(tuned) - 1e-9


@pytest.mark.parametrize("structure", ["full", "diag", "kron"])
def test_samples_have_the_posterior_covariance(x64, structure):
    post = fitted("reg", "last_layer", structure, "ggn")
    draws = fb.sample(post, jax.random.key(4), 40_000)
    assert draws["dense_0"]["w"].shape == (40_000, 1, 10)
    np.testing.assert_array_equal(draws["dense_0"]["w"][7], post.mean["dense_0"]["w"])
    flat = np.concatenate([draws["dense_2"]["b"], draws["dense_2"]["w"].reshape(40_000, -1)], 1)
    precision = np.asarray(fb.posterior_precision(post))
    cov = np.linalg.inv(np.diag(precision) if structure == "diag" else precision)
    np.testing.assert_allclose(np.cov(flat.T), cov, atol=0.03 * np.max(np.diag(cov)))


def test_subsets_by_path_and_predicate(x64):
    outputs_fn, params, x, y = problem("class")
    last = fitted("class", "last_layer", "full", "ggn")
    by_path = fb.laplace(outputs_fn, params, (x, y), subset=["dense_2"], prior_precision=2.0)
    by_test = fb.laplace(
        outputs_fn,
        params,
        (x, y),
        subset=lambda path: path.startswith("dense_2/"),
        prior_precision=2.0,
    )
    for post in (by_path, by_test):
        assert post.subset == last.subset
        np.testing.assert_allclose(post.curvature, last.curvature, rtol=1e-12)
    kernels = fb.laplace(outputs_fn, params, (x, y), subset=["dense_0/w", "dense_2/w"])
    assert kernels.curvature.shape == (56, 56)


def test_temperature_scales_the_likelihood(x64):
    outputs_fn, params, x, y = problem("class")
    cold = fb.laplace(outputs_fn, params, (x, y), temperature=0.5, prior_precision=2.0)
    warm = fitted("class", "all", "full", "ggn")
    np.testing.assert_allclose(
        fb.posterior_precision(cold) - 2.0 * np.eye(67),
        2 * (fb.posterior_precision(warm) - 2.0 * np.eye(67)),
        rtol=1e-12,
        atol=1e-12,
    )


# ---------------------------------------------------------------------------------------------
# Bad input.


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"likelihood": "poisson"}, "likelihood must be 'classification' or 'regression'"),
        ({"prior_precision": 0.0}, "prior_precision must be a finite number > 0, got 0.0"),
        ({"prior_precision": -1.0}, "prior_precision must be a finite number > 0"),
        ({"prior_precision": np.ones(3)}, "one value per subset leaf (4), got shape (3,)"),
        ({"subset": ["dense_9"]}, "subset ['dense_9'] names no parameter"),
        ({"subset": lambda path: False}, "names no parameter; the params are dense_0/b"),
        ({"structure": "lowrank"}, "structure must be 'full', 'diag' or 'kron'"),
        ({"curvature": "hessian"}, "curvature must be 'ggn' or 'ef'"),
        ({"sigma_noise": 0.5}, "sigma_noise is for regression"),
    ],
)
def test_bad_input_is_one_line(x64, kwargs, message):
    outputs_fn, params, x, y = problem("class")
    with pytest.raises(ValueError) as info:
        fb.laplace(outputs_fn, params, (x, y), **kwargs)
    text = str(info.value)
    assert message in text and "\n" not in text, text
    assert text.startswith("laplace: ")


def test_bad_targets_and_kron_subsets(x64):
    outputs_fn, params, x, y = problem("class")
    with pytest.raises(ValueError, match="integer labels of shape"):
        fb.laplace(outputs_fn, params, (x, y.astype(float)))
    with pytest.raises(ValueError, match="targets of the outputs' shape"):
        fb.laplace(outputs_fn, params, (x, np.ones((40, 2))), likelihood="regression")

    def scaled(p, x):
        return p["scale"] * outputs_fn(p, x)

    with pytest.raises(ValueError, match="scale is not one"):
        fb.laplace(scaled, {**params, "scale": jnp.ones(())}, (x, y), structure="kron")
    post = fitted("class", "all", "full", "ggn")
    with pytest.raises(TypeError, match="needs key"):
        fb.predictive(post, x, link_approx="mc")
