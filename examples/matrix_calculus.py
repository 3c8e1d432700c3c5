"""Worked examples from a matrix-calculus course, each closed form checked by funcnet.diff.

1. f(x) = (xᵀAx)(xᵀBx), A and B symmetric:
   ∇f = 2(xᵀBx)Ax + 2(xᵀAx)Bx,  ∇²f = 2(xᵀBx)A + 2(xᵀAx)B + 4(Axxᵀ B + Bxxᵀ A).
2. f(x) = ‖x‖³:  ∇f = 3‖x‖x,  ∇²f = 3xxᵀ/‖x‖ + 3‖x‖I.
3. f(X) = det(AXB), AXB square and invertible:  ∇_X f = det(AXB)·Aᵀ(AXB)⁻ᵀBᵀ.
4. Softmax regression, z = Wx + b, ℓ = −log softmax(z)_y:
   ∇z = softmax(z) − e_y,  ∇W = ∇z xᵀ,  ∇b = ∇z,  ∇x = Wᵀ∇z.
5. f(x₁, x₂, x₃) = (x₁x₂ sin x₃ + exp(x₁x₂))/x₃, evaluated as a trace of elementary
   operations and differentiated by hand, forward mode (one tangent sweep per input) and
   reverse mode (one adjoint sweep for the whole gradient).
6. f(x) = ⟨Ax, x⟩ = xᵀAx, A not symmetric: df = ⟨Ax, dx⟩ + ⟨A dx, x⟩ = ⟨(A + Aᵀ)x, dx⟩,
   so ∇f = (A + Aᵀ)x; the familiar 2Ax holds only when A = Aᵀ.
7. f(X) = det X:  df = det X·tr(X⁻¹dX) = ⟨det X·X⁻ᵀ, dX⟩ (Jacobi's formula), so
   ∇f = det X·X⁻ᵀ. Forward mode (`jax.jvp`) gives the number df along one dX; reverse
   mode (`jax.vjp` with cotangent 1) gives the whole ∇f.
8. F(X) = X⁻¹:  differentiating XX⁻¹ = I gives dX·X⁻¹ + X·d(X⁻¹) = 0, so
   d(X⁻¹) = −X⁻¹dX X⁻¹.
9. The second differential of f(x) = (xᵀAx)(xᵀBx), a bilinear form in h₁, h₂:
   d²f[h₁, h₂] = h₁ᵀ∇²f h₂ = 2(xᵀBx)h₁ᵀAh₂ + 2(xᵀAx)h₁ᵀBh₂
                 + 4(h₁ᵀAx·xᵀBh₂ + h₁ᵀBx·xᵀAh₂),
   computed without the Hessian as a jvp of the gradient (forward-over-reverse).
10. p = softmax(z), L = −log p_y:  dp = (diag(p) − ppᵀ)dz and ∇ₚL = −1_y/p_y (zero except
    −1/p_y at y). The chain rule, with the symmetric Jacobian, gives
    ∇_z L = (diag(p) − ppᵀ)(−1_y/p_y) = p − 1_y, the ∇z of item 4.

Run: python examples/matrix_calculus.py
"""

import math
import unicodedata

import jax
import jax.numpy as jnp
import numpy as np

import funcnet.diff as fd

# 1. Product of two quadratic forms ------------------------------------------------------


def quadratic_product(x: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
    """f(x) = (xᵀAx)(xᵀBx); x of shape (n,), A and B symmetric (n, n)."""
    return (x @ a @ x) * (x @ b @ x)


def quadratic_product_grad(x: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
    """∇f = 2(xᵀBx)Ax + 2(xᵀAx)Bx, by the product rule and ∇(xᵀAx) = 2Ax."""
    return 2 * (x @ b @ x) * (a @ x) + 2 * (x @ a @ x) * (b @ x)


def quadratic_product_hessian(x: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
    """∇²f = 2(xᵀBx)A + 2(xᵀAx)B + 4(Axxᵀ B + Bxxᵀ A), the Jacobian of the gradient."""
    ax, bx = a @ x, b @ x
    return 2 * (x @ bx) * a + 2 * (x @ ax) * b + 4 * (jnp.outer(ax, bx) + jnp.outer(bx, ax))


# 2. Cube of the Euclidean norm ----------------------------------------------------------


def cubed_norm(x: jax.Array) -> jax.Array:
    """f(x) = ‖x‖³ = (xᵀx)^(3/2), written without `abs` so that it is complex-analytic."""
    return (x @ x) ** 1.5


def cubed_norm_grad(x: jax.Array) -> jax.Array:
    """∇f = (3/2)(xᵀx)^(1/2)·2x = 3‖x‖x."""
    return 3 * jnp.sqrt(x @ x) * x


def cubed_norm_hessian(x: jax.Array) -> jax.Array:
    """∇²f = 3xxᵀ/‖x‖ + 3‖x‖I, from ∇‖x‖ = x/‖x‖ and the product rule."""
    norm = jnp.sqrt(x @ x)
    return 3 * jnp.outer(x, x) / norm + 3 * norm * jnp.eye(x.shape[0], dtype=x.dtype)


# 3. Determinant of a matrix product -----------------------------------------------------


def det_product(x: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
    """f(X) = det(AXB); A (p, m), X (m, k), B (k, p)."""
    return jnp.linalg.det(a @ x @ b)


def det_product_grad(x: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
    """∇_X f = det(AXB)·Aᵀ(AXB)⁻ᵀBᵀ, of shape (m, k).

    From Jacobi's formula d det(M) = det(M) tr(M⁻¹ dM) with dM = A dX B:
    df = det(M) tr(B M⁻¹ A dX) = ⟨det(M)·Aᵀ M⁻ᵀ Bᵀ, dX⟩.
    """
    m = a @ x @ b
    return jnp.linalg.det(m) * a.T @ jnp.linalg.inv(m).T @ b.T


# 4. Softmax regression ------------------------------------------------------------------


def softmax_regression_loss(params: dict, x: jax.Array, y: jax.Array) -> jax.Array:
    """ℓ = −log softmax(Wx + b)_y for one example; W (c, d), b (c,), x (d,), y an int."""
    z = params["w"] @ x + params["b"]
    return -jax.nn.log_softmax(z)[y]


def softmax_regression_grads(params: dict, x: jax.Array, y: jax.Array) -> tuple[dict, jax.Array]:
    """(∇_params ℓ, ∇_x ℓ): ∇z = softmax(z) − e_y, ∇W = ∇z xᵀ, ∇b = ∇z, ∇x = Wᵀ∇z."""
    w, b = params["w"], params["b"]
    dz = jax.nn.softmax(w @ x + b) - jax.nn.one_hot(y, b.shape[0], dtype=x.dtype)
    return {"w": jnp.outer(dz, x), "b": dz}, w.T @ dz


# 5. A scalar function of three variables, traced by hand --------------------------------


def traced_function(x: jax.Array) -> jax.Array:
    """f(x₁, x₂, x₃) = (x₁x₂ sin x₃ + exp(x₁x₂)) / x₃; x of shape (3,)."""
    x1, x2, x3 = x
    return (x1 * x2 * jnp.sin(x3) + jnp.exp(x1 * x2)) / x3


def traced_function_grad(x: jax.Array) -> jax.Array:
    """∇f = ((x₂ sin x₃ + x₂e^{x₁x₂})/x₃, (x₁ sin x₃ + x₁e^{x₁x₂})/x₃,
    x₁x₂ cos x₃/x₃ − (x₁x₂ sin x₃ + e^{x₁x₂})/x₃²)."""
    x1, x2, x3 = x
    e = jnp.exp(x1 * x2)
    return jnp.stack(
        [
            (x2 * jnp.sin(x3) + x2 * e) / x3,
            (x1 * jnp.sin(x3) + x1 * e) / x3,
            x1 * x2 * jnp.cos(x3) / x3 - (x1 * x2 * jnp.sin(x3) + e) / x3**2,
        ]
    )


def forward_trace(x: tuple[float, float, float], dx: tuple[float, float, float]) -> list[tuple]:
    """Forward mode by hand: each intermediate vᵢ with its tangent v̇ᵢ = ∂vᵢ/∂x · ẋ.

    Returns rows `(name, primal rule, value, tangent rule, tangent)`; the last row holds
    f(x) and the directional derivative ∇f·ẋ. One sweep per direction ẋ, so the gradient
    of f: ℝ³ → ℝ takes three.
    """
    v1, v2, v3 = x
    d1, d2, d3 = dx
    v4, d4 = v1 * v2, d1 * v2 + v1 * d2
    v5, d5 = math.sin(v3), math.cos(v3) * d3
    v6, d6 = math.exp(v4), math.exp(v4) * d4
    v7, d7 = v4 * v5, d4 * v5 + v4 * d5
    v8, d8 = v7 + v6, d7 + d6
    v9, d9 = v8 / v3, (d8 - v8 / v3 * d3) / v3
    return [
        ("v1", "x1", v1, "ẋ1", d1),
        ("v2", "x2", v2, "ẋ2", d2),
        ("v3", "x3", v3, "ẋ3", d3),
        ("v4", "v1·v2", v4, "v̇1·v2 + v1·v̇2", d4),
        ("v5", "sin v3", v5, "cos v3·v̇3", d5),
        ("v6", "exp v4", v6, "v6·v̇4", d6),
        ("v7", "v4·v5", v7, "v̇4·v5 + v4·v̇5", d7),
        ("v8", "v7 + v6", v8, "v̇7 + v̇6", d8),
        ("v9", "v8 / v3", v9, "(v̇8 − v9·v̇3)/v3", d9),
    ]


def reverse_trace(x: tuple[float, float, float]) -> list[tuple]:
    """Reverse mode by hand: the forward sweep stores every vᵢ, then adjoints v̄ᵢ = ∂f/∂vᵢ
    flow back from v̄9 = 1, each node adding its share to the nodes it was computed from.

    Returns rows `(name, adjoint rule, adjoint)` in the order computed; the rows of v1, v2,
    v3 hold the whole gradient ∇f after this single sweep.
    """
    v1, v2, v3 = x
    v4 = v1 * v2
    v5 = math.sin(v3)
    v6 = math.exp(v4)
    v7 = v4 * v5
    v8 = v7 + v6
    v9 = v8 / v3
    b9 = 1.0
    b8 = b9 / v3
    b3 = -b9 * v9 / v3  # v9 = v8/v3 depends on v3 directly
    b7 = b8
    b6 = b8
    b4 = b7 * v5 + b6 * v6  # v4 feeds both v7 and v6
    b5 = b7 * v4
    b3 = b3 + b5 * math.cos(v3)
    b1 = b4 * v2
    b2 = b4 * v1
    return [
        ("v9", "1", b9),
        ("v8", "v̄9/v3", b8),
        ("v7", "v̄8", b7),
        ("v6", "v̄8", b6),
        ("v5", "v̄7·v4", b5),
        ("v4", "v̄7·v5 + v̄6·v6", b4),
        ("v3", "−v̄9·v9/v3 + v̄5·cos v3", b3),
        ("v2", "v̄4·v1", b2),
        ("v1", "v̄4·v2", b1),
    ]


# 6. Quadratic form with a non-symmetric matrix -----------------------------------------


def quadratic_form(x: jax.Array, a: jax.Array) -> jax.Array:
    """f(x) = ⟨Ax, x⟩ = xᵀAx; x of shape (n,), A of shape (n, n), not necessarily symmetric."""
    return x @ a @ x


def quadratic_form_grad(x: jax.Array, a: jax.Array) -> jax.Array:
    """∇f = (A + Aᵀ)x, from df = ⟨A dx, x⟩ + ⟨Ax, dx⟩ = ⟨Aᵀx + Ax, dx⟩."""
    return (a + a.T) @ x


# 7. Determinant --------------------------------------------------------------------------


def det_grad(x: jax.Array) -> jax.Array:
    """∇ det X = det X·X⁻ᵀ for an invertible X of shape (n, n)."""
    return jnp.linalg.det(x) * jnp.linalg.inv(x).T


def det_differential(x: jax.Array, dx: jax.Array) -> jax.Array:
    """d det X = det X·tr(X⁻¹dX) = ⟨det X·X⁻ᵀ, dX⟩, a scalar; X and dX of shape (n, n)."""
    return jnp.linalg.det(x) * jnp.trace(jnp.linalg.inv(x) @ dx)


# 8. Matrix inverse -----------------------------------------------------------------------


def inverse_differential(x: jax.Array, dx: jax.Array) -> jax.Array:
    """d(X⁻¹) = −X⁻¹dX X⁻¹, of shape (n, n), from d(XX⁻¹) = dX X⁻¹ + X d(X⁻¹) = 0."""
    inv = jnp.linalg.inv(x)
    return -inv @ dx @ inv


# 9. Second differential of the product of two quadratic forms ---------------------------


def quadratic_product_second_differential(
    x: jax.Array, a: jax.Array, b: jax.Array, h1: jax.Array, h2: jax.Array
) -> jax.Array:
    """d²f[h₁, h₂] = h₁ᵀ∇²f h₂ for f = (xᵀAx)(xᵀBx), A and B symmetric; a scalar.

    Differentiating df[h₂] = 2(xᵀBx)xᵀAh₂ + 2(xᵀAx)xᵀBh₂ along h₁:
    d²f[h₁, h₂] = 2(xᵀBx)h₁ᵀAh₂ + 2(xᵀAx)h₁ᵀBh₂ + 4(h₁ᵀAx·xᵀBh₂ + h₁ᵀBx·xᵀAh₂).
    """
    ax, bx = a @ x, b @ x
    return (
        2 * (x @ bx) * (h1 @ a @ h2)
        + 2 * (x @ ax) * (h1 @ b @ h2)
        + 4 * ((h1 @ ax) * (bx @ h2) + (h1 @ bx) * (ax @ h2))
    )


# 10. Softmax and the negative log-probability -------------------------------------------


def softmax_jacobian(z: jax.Array) -> jax.Array:
    """∂p/∂z = diag(p) − ppᵀ for p = softmax(z); z of shape (c,), result (c, c), symmetric.

    From pᵢ = e^{zᵢ}/Σₖe^{zₖ}: ∂pᵢ/∂zⱼ = pᵢ[i = j] − pᵢpⱼ.
    """
    p = jax.nn.softmax(z)
    return jnp.diag(p) - jnp.outer(p, p)


def neg_log_prob(p: jax.Array, y: int) -> jax.Array:
    """L = −log p_y as a function of the probability vector p of shape (c,)."""
    return -jnp.log(p[y])


def neg_log_prob_grad(p: jax.Array, y: int) -> jax.Array:
    """∇ₚL = −1_y/p_y: zero except −1/p_y at index y; shape (c,)."""
    return -jax.nn.one_hot(y, p.shape[0], dtype=p.dtype) / p[y]


# Checks ---------------------------------------------------------------------------------


def _rel(a: jax.Array, b: jax.Array) -> float:
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


def _pad(text: str, width: int) -> str:
    """Left-align text in a column, not counting combining marks (the dot of v̇, the bar of v̄)."""
    shown = sum(not unicodedata.combining(c) for c in text)
    return text + " " * max(width - shown, 0)


def _symmetric(rng: np.random.Generator, n: int) -> jax.Array:
    m = rng.normal(size=(n, n))
    return jnp.asarray((m + m.T) / 2)


def main() -> dict[str, float]:
    """Print every closed form next to funcnet.diff and return the relative differences."""
    results = {}
    hessian = jax.jit(fd.hessian, static_argnums=0)
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.normal(size=5))
        a, b = _symmetric(rng, 5), _symmetric(rng, 5)
        f = lambda v: quadratic_product(v, a, b)
        results["(xᵀAx)(xᵀBx) gradient"] = _rel(jax.grad(f)(x), quadratic_product_grad(x, a, b))
        results["(xᵀAx)(xᵀBx) Hessian"] = _rel(hessian(f, x), quadratic_product_hessian(x, a, b))

        results["‖x‖³ gradient"] = _rel(jax.grad(cubed_norm)(x), cubed_norm_grad(x))
        results["‖x‖³ Hessian"] = _rel(hessian(cubed_norm, x), cubed_norm_hessian(x))
        results["‖x‖³ complex step"] = _rel(fd.complex_step_grad(cubed_norm, x), cubed_norm_grad(x))

        am = jnp.asarray(rng.normal(size=(3, 4)))
        xm = jnp.asarray(rng.normal(size=(4, 6)))
        bm = jnp.asarray(rng.normal(size=(6, 3)))
        g = lambda m: det_product(m, am, bm)
        results["det(AXB) gradient"] = _rel(jax.grad(g)(xm), det_product_grad(xm, am, bm))

        params = {"w": jnp.asarray(rng.normal(size=(4, 5))), "b": jnp.zeros(4)}
        label = 2
        ad_params, ad_x = jax.grad(softmax_regression_loss, argnums=(0, 1))(params, x, label)
        cf_params, cf_x = softmax_regression_grads(params, x, label)
        results["softmax regression ∇W"] = _rel(ad_params["w"], cf_params["w"])
        results["softmax regression ∇b"] = _rel(ad_params["b"], cf_params["b"])
        results["softmax regression ∇x"] = _rel(ad_x, cf_x)

        point = (1.5, 0.5, 2.0)
        xp = jnp.array(point)
        results["traced f gradient"] = _rel(jax.grad(traced_function)(xp), traced_function_grad(xp))
        forward = [forward_trace(point, tuple(e))[-1][-1] for e in jnp.eye(3).tolist()]
        results["traced f forward mode by hand"] = _rel(
            jnp.array(forward), jax.grad(traced_function)(xp)
        )
        adjoints = {row[0]: row[-1] for row in reverse_trace(point)}
        backward = jnp.array([adjoints["v1"], adjoints["v2"], adjoints["v3"]])
        results["traced f reverse mode by hand"] = _rel(backward, jax.grad(traced_function)(xp))
        autodiff = jax.grad(traced_function)(xp).tolist()

        # Reverse mode spelled out: ∇f is the vjp of f with cotangent 1 on its scalar output.
        an = jnp.asarray(rng.normal(size=(5, 5)))
        value, pullback = jax.vjp(lambda v: quadratic_form(v, an), x)
        (by_vjp,) = pullback(jnp.ones_like(value))
        results["⟨Ax, x⟩ gradient (A + Aᵀ)x, vjp"] = _rel(by_vjp, quadratic_form_grad(x, an))
        wrong = _rel(2 * an @ x, by_vjp)

        # Forward mode gives the differential along one dX, reverse mode the whole gradient.
        xs = jnp.asarray(rng.normal(size=(4, 4)))
        dxs = jnp.asarray(rng.normal(size=(4, 4)))
        _, d_det = jax.jvp(jnp.linalg.det, (xs,), (dxs,))
        results["d det X along dX, jvp"] = _rel(d_det, det_differential(xs, dxs))
        value, pullback = jax.vjp(jnp.linalg.det, xs)
        (det_by_vjp,) = pullback(jnp.ones_like(value))
        results["∇ det X = det X·X⁻ᵀ, vjp"] = _rel(det_by_vjp, det_grad(xs))
        _, d_inv = jax.jvp(jnp.linalg.inv, (xs,), (dxs,))
        results["d(X⁻¹) along dX, jvp"] = _rel(d_inv, inverse_differential(xs, dxs))

        h1, h2 = jnp.asarray(rng.normal(size=(2, 5)))
        second = quadratic_product_second_differential(x, a, b, h1, h2)
        fwd_over_rev = jax.jvp(jax.grad(f), (x,), (h2,))[1] @ h1
        results["h₁ᵀ∇²f h₂, jvp of grad"] = _rel(fwd_over_rev, second)
        results["h₁ᵀ∇²f h₂, funcnet.diff.hvp"] = _rel(fd.hvp(f, x, h2) @ h1, second)
        results["h₁ᵀ∇²f h₂ vs closed-form ∇²f"] = _rel(
            h1 @ quadratic_product_hessian(x, a, b) @ h2, second
        )

        z = params["w"] @ x + params["b"]
        p = jax.nn.softmax(z)
        results["softmax Jacobian, jacfwd"] = _rel(
            jax.jacfwd(jax.nn.softmax)(z), softmax_jacobian(z)
        )
        results["softmax Jacobian, jacrev"] = _rel(
            jax.jacrev(jax.nn.softmax)(z), softmax_jacobian(z)
        )
        grad_p = neg_log_prob_grad(p, label)
        results["∇ₚ(−log p_y)"] = _rel(jax.grad(neg_log_prob)(p, label), grad_p)
        chained = softmax_jacobian(z) @ grad_p
        results["(diag(p) − ppᵀ)(−1_y/p_y) = ∇z"] = _rel(chained, ad_params["b"])
        p_minus_e = p - jax.nn.one_hot(label, p.shape[0], dtype=p.dtype)

    print("closed form vs automatic differentiation (max relative difference, float64)")
    for name, value in results.items():
        print(f"  {_pad(name, 34)} {value:.2e}")
    print("\nwrong closed form: 2Ax against ∇⟨Ax, x⟩ = (A + Aᵀ)x for a non-symmetric A")
    print(f"  {_pad('2Ax, relative error', 34)} {wrong:.2e}")
    print(f"\nchain rule through softmax at z = Wx + b, y = {label}:")
    print("  (diag(p) − ppᵀ)(−1_y/p_y) =", "  ".join(f"{v:+.6f}" for v in chained.tolist()))
    print("  p − 1_y                   =", "  ".join(f"{v:+.6f}" for v in p_minus_e.tolist()))

    print(f"\nf(x1, x2, x3) = (x1·x2·sin x3 + exp(x1·x2))/x3 at x = {point}")
    print("\nforward mode, tangent seed ẋ = e1 (one sweep gives ∂f/∂x1):")
    print(f"  {'':4} {'primal':<10} {'value':>12}   {'tangent':<20} {'value':>12}")
    for name, rule, value, tangent_rule, tangent in forward_trace(point, (1.0, 0.0, 0.0)):
        tangent_rule = _pad(tangent_rule, 20)
        print(f"  {name:<4} {rule:<10} {value:>12.6f}   {tangent_rule} {tangent + 0.0:>12.6f}")
    print("\nreverse mode, one backward sweep from v̄9 = 1 gives the whole gradient:")
    print(f"  {'':4} {'adjoint':<26} {'value':>12}")
    for name, rule, value in reverse_trace(point):
        print(f"  {name:<4} {_pad(rule, 26)} {value:>12.6f}")
    print("\n  jax.grad:", "  ".join(f"{g:.6f}" for g in autodiff))
    return results


if __name__ == "__main__":
    main()
