"""jacobian, hessian and flat_hessian against jax.jacobian and jax.hessian."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import funcnet.diff as fd


def assert_trees_close(actual, expected, rtol=1e-12, atol=1e-12):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        assert a.shape == e.shape
        np.testing.assert_allclose(a, e, rtol=rtol, atol=atol)


def wide(x):  # ℝ³ → ℝ⁸: more outputs than inputs
    return jnp.concatenate([jnp.sin(x) * x[0], jnp.cos(x), jnp.tanh(x[:2] * x[2])])


def tall(x):  # ℝ^(2×4) → ℝ²
    return jnp.stack([jnp.sum(jnp.exp(x[0]) * x[1]), jnp.prod(jnp.sin(x))])


def tree_to_tree(p):
    return {
        "a": jnp.tanh(p["w"] @ p["x"]),
        "b": (jnp.sum(p["w"] ** 2) * p["s"], p["x"][:2] * p["s"]),
    }


def scalar_in(s):
    return jnp.stack([jnp.sin(s), s**3, jnp.exp(-s)])


def scalar_out(p):
    return jnp.sum(p["w"] @ p["x"]) * p["s"] ** 2


def make_inputs(name):
    rng = np.random.default_rng(7)
    tree = {
        "w": jnp.asarray(rng.normal(size=(3, 4))),
        "x": jnp.asarray(rng.normal(size=4)),
        "s": jnp.asarray(0.7),
    }
    return {
        "wide": (wide, jnp.array([0.3, -1.2, 0.8])),
        "tall": (tall, jnp.asarray(rng.normal(size=(2, 4)))),
        "tree_to_tree": (tree_to_tree, tree),
        "scalar_in": (scalar_in, jnp.asarray(0.4)),
        "scalar_out": (scalar_out, tree),
    }[name]


CASES = ["wide", "tall", "tree_to_tree", "scalar_in", "scalar_out"]


@pytest.mark.parametrize("mode", ["fwd", "rev", "auto"])
@pytest.mark.parametrize("case", CASES)
def test_jacobian_matches_jax_jacobian(x64, case, mode):
    f, x = make_inputs(case)
    actual = jax.jit(lambda x: fd.jacobian(f, x, mode=mode))(x)
    assert_trees_close(actual, jax.jit(jax.jacobian(f))(x))


def test_jacobian_runs_eagerly(x64):
    f, x = make_inputs("wide")
    np.testing.assert_allclose(fd.jacobian(f, x), jax.jacfwd(f)(x), rtol=1e-12)


def forward_only(x):
    """A while_loop: differentiable in forward mode only."""

    def body(state):
        i, y = state
        return i + 1, jnp.sin(y) + x[0] * x[1]

    _, y = jax.lax.while_loop(lambda s: s[0] < 3, body, (0, jnp.ones(5) * x[0]))
    return y


@jax.custom_vjp
def reverse_only(x):
    return jnp.stack([jnp.sum(x**2), jnp.sum(jnp.sin(x))])


reverse_only.defvjp(
    lambda x: (reverse_only(x), x),
    lambda x, g: (g[0] * 2 * x + g[1] * jnp.cos(x),),
)


def test_auto_mode_is_forward_when_inputs_are_fewer(x64):
    x = jnp.array([0.5, -0.3])  # 2 inputs, 5 outputs
    expected = jax.jacfwd(forward_only)(x)
    np.testing.assert_allclose(fd.jacobian(forward_only, x), expected, rtol=1e-12)
    with pytest.raises(ValueError, match=r"[Rr]everse-mode"):
        fd.jacobian(forward_only, x, mode="rev")


def test_auto_mode_is_reverse_when_outputs_are_fewer(x64):
    x = jnp.linspace(-1.0, 1.0, 5)  # 5 inputs, 2 outputs
    expected = jnp.stack([2 * x, jnp.cos(x)])
    np.testing.assert_allclose(fd.jacobian(reverse_only, x), expected, rtol=1e-12)
    with pytest.raises(TypeError, match="custom_vjp"):
        fd.jacobian(reverse_only, x, mode="fwd")


def test_jacobian_rejects_unknown_mode():
    with pytest.raises(ValueError, match="mode"):
        fd.jacobian(jnp.sin, jnp.ones(2), mode="sideways")


@pytest.mark.parametrize("case", ["scalar_out", "mlp"])
def test_hessian_matches_jax_hessian(x64, mlp_problem, case):
    if case == "mlp":
        f, x = mlp_problem.loss, mlp_problem.params
    else:
        f, x = make_inputs(case)
    expected = jax.jit(jax.hessian(f))(x)
    assert_trees_close(jax.jit(lambda p: fd.hessian(f, p))(x), expected)


def test_flat_hessian_is_the_dense_hessian_of_the_raveled_params(x64, mlp_problem):
    flat, _ = ravel_pytree(mlp_problem.params)
    expected = mlp_problem.hessian
    matrix = jax.jit(lambda p: fd.flat_hessian(mlp_problem.loss, p)[0])(mlp_problem.params)
    assert matrix.shape == (flat.size, flat.size)
    np.testing.assert_allclose(matrix, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(matrix, matrix.T, rtol=1e-12, atol=1e-12)


def test_flat_hessian_unravel_maps_columns_to_params(x64):
    # f(p) = Σ c ⊙ w² + s³ has H = diag(2c, 6s), in ravel order (s before w).
    c = jnp.array([[1.0, 2.0], [3.0, 4.0]])
    params = {"w": jnp.ones((2, 2)), "s": jnp.asarray(2.0)}
    matrix, unravel = fd.flat_hessian(lambda p: jnp.sum(c * p["w"] ** 2) + p["s"] ** 3, params)
    np.testing.assert_allclose(matrix, np.diag([12.0, 2, 4, 6, 8]), atol=1e-12)
    column = unravel(matrix[:, 3])
    np.testing.assert_allclose(column["w"], [[0, 0], [6, 0]], atol=1e-12)
    assert column["s"] == 0
