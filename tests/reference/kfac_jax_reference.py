"""Writes the K-FAC reference fixture, ``tests/data/kfac_jax_0.0.8.npz``, from kfac-jax 0.0.8.

kfac-jax 0.0.8 runs on JAX 0.6, below funcnet's floor, so this script runs only in a side
environment of its own and is never imported by the suite (its name is not ``test_*.py`` and
nothing imports ``tests.reference``). ``tests/optim/test_kfac_reference.py`` reads the file it
writes, with numpy alone. To regenerate (Python 3.11)::

    python3 -m venv /tmp/kfacjax
    /tmp/kfacjax/bin/pip install "jax[cpu]==0.6.2" kfac-jax==0.0.8 numpy
    /tmp/kfacjax/bin/python tests/reference/kfac_jax_reference.py tests/data/kfac_jax_0.0.8.npz

The environment it was written with (``pip freeze``)::

    absl-py==2.5.1  attrs==26.1.0  chex==0.1.90  cloudpickle==3.1.3  decorator==5.3.2
    distrax==0.1.5  dm-tree==0.1.10  gast==0.7.0  immutabledict==4.3.1  jax==0.6.2
    jaxlib==0.6.2  kfac-jax==0.0.8  ml_dtypes==0.7.0  numpy==2.4.6  opt_einsum==3.4.0
    optax==0.2.8  scipy==1.17.1  six==1.17.0  tensorflow-probability==0.25.0  toolz==1.2.0
    typing_extensions==4.16.0  wrapt==2.5.2

The models are funcnet models written in plain JAX, with funcnet's parameter names and
layouts (``nn.serial`` names a layer ``<kind>_<index>``; a dense kernel ``w`` is ``(in, out)``,
a conv kernel HWIO, inputs NHWC, ``y = x @ w + b``), so the suite rebuilds them with
``funcnet.nn`` and compares. kfac-jax finds their layers by its automatic registration; the
losses are registered by hand. Everything runs in float64.

Besides writing kfac-jax's numbers, the script checks them against the conventions it records
in the file's ``meta`` entry (factors from per-example Jacobians, the π-adjusted inverse, the
quadratic model's coefficients, the damping rule) and stops if any of them disagrees, so the
``meta`` text is what kfac-jax computes and not only what its source appears to say.
"""

import itertools
import json
import sys

import jax
import jax.numpy as jnp
import kfac_jax
import numpy as np
from jax import lax

jax.config.update("jax_enable_x64", True)

BATCH_MLP, BATCH_CNN = 8, 4
CLASSES = 3
DAMPING = 0.05  # the damping of the stored preconditioned gradients
OPT_DAMPING = 0.1  # the optimizer's fixed damping, and its adaptive damping's initial value
# The optimizer runs: (curvature_ema, use_adaptive_damping, damping_adaptation_decay). The fixed
# run keeps kfac-jax's default moving average of the factors; the adaptive one refreshes them
# every step (ema 0) with the decay funcnet's kfac uses, (19/20) per step, so that
# funcnet.optim.kfac(factor_decay=0, damping_adaptation_interval=1) can be compared as is.
RUNS = {"opt_fixed_damping": (0.95, False, 0.9), "opt_adaptive_damping": (0.0, True, 0.95)}
STEPS = 3
TOL = 1e-10  # the script's own checks of the conventions


# --- The models, in funcnet's layout -------------------------------------------------------


def mlp_params(rng: np.random.Generator) -> dict:
    sizes = [6, 5, 4, 3]
    params = {}
    for i, (m, n) in enumerate(itertools.pairwise(sizes)):
        params[f"dense_{2 * i}"] = {
            "w": rng.normal(size=(m, n)) / np.sqrt(m),
            "b": 0.1 * rng.normal(size=n),
        }
    return params


def mlp_apply(params: dict, x, probes=None):
    """Logits of dense(5) tanh dense(4) tanh dense(3); `probes` (one per dense layer, shaped
    like its output) are added to the pre-activations, for per-example Jacobians."""
    h = x
    for i, name in enumerate(("dense_0", "dense_2", "dense_4")):
        s = h @ params[name]["w"] + params[name]["b"]
        if probes is not None:
            s = s + probes[name]
        h = s if i == 2 else jnp.tanh(s)
    return h


def cnn_params(rng: np.random.Generator) -> dict:
    return {
        "conv_0": {"w": rng.normal(size=(3, 3, 2, 3)) / np.sqrt(18), "b": 0.1 * rng.normal(size=3)},
        "conv_2": {"w": rng.normal(size=(3, 3, 3, 4)) / np.sqrt(27), "b": 0.1 * rng.normal(size=4)},
        "dense_5": {"w": rng.normal(size=(16, 3)) / 4.0, "b": 0.1 * rng.normal(size=3)},
    }


CNN_CONVS = {"conv_0": ((1, 1), "SAME"), "conv_2": ((2, 2), "VALID")}


def conv(x, w, strides, padding):
    return lax.conv_general_dilated(
        x, w, window_strides=strides, padding=padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def cnn_apply(params: dict, x, probes=None):
    """conv(3, 3×3, SAME) tanh conv(4, 3×3, stride 2, VALID) tanh flatten dense(3)."""
    h = x
    for name, (strides, padding) in CNN_CONVS.items():
        s = conv(h, params[name]["w"], strides, padding) + params[name]["b"]
        if probes is not None:
            s = s + probes[name]
        h = jnp.tanh(s)
    h = h.reshape(h.shape[0], -1)
    s = h @ params["dense_5"]["w"] + params["dense_5"]["b"]
    return s if probes is None else s + probes["dense_5"]


def softmax_ce(logits, labels):
    """funcnet.losses.softmax_cross_entropy: the batch mean of −log softmax(z)_y."""
    log_p = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(log_p, labels[:, None], axis=1))


def mse(pred, targets):
    """funcnet.losses.mse: the batch mean of each example's mean over its outputs."""
    return jnp.mean(jnp.square(pred - targets))


def make_loss(apply, kind):
    """kfac-jax's loss function of (params, (x, y)), with the loss registered."""

    def loss(params, batch):
        x, y = batch
        out = apply(params, x)
        if kind == "ce":
            kfac_jax.register_softmax_cross_entropy_loss(out, y)
            return softmax_ce(out, y)
        # kfac-jax's squared error is weight · Σ_j (ŷ_j − y_j)² / B (no ½); mse averages over
        # the 3 outputs too, so weight 1/3 registers exactly funcnet's mse.
        kfac_jax.register_squared_error_loss(out, y, weight=1.0 / CLASSES)
        return mse(out, y)

    return loss


# --- Independent factors, by funcnet's conventions -----------------------------------------


def patches(x, kernel_hw, strides, padding):
    """Input patches ``(B, T, kh·kw·C)``, ordered (kh, kw, C) row-major like an HWIO kernel's
    ``reshape(-1, out)``."""
    kh, kw = kernel_hw
    if padding == "SAME":
        ph, pw = kh - 1, kw - 1  # stride 1 here
        x = jnp.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    b, h, w, c = x.shape
    oh, ow = (h - kh) // strides[0] + 1, (w - kw) // strides[1] + 1
    cols = [
        x[
            :,
            i : i + strides[0] * (oh - 1) + 1 : strides[0],
            j : j + strides[1] * (ow - 1) + 1 : strides[1],
            :,
        ]
        for i in range(kh)
        for j in range(kw)
    ]
    return jnp.stack(cols, axis=3).reshape(b, oh * ow, kh * kw * c)


def layer_inputs(model, params, x):
    """Each kernel's ā, shape (B, T, d_in + 1): the layer input (patches for a conv) with a
    trailing 1 for the bias."""
    out = {}
    if model == "cnn":
        h = x
        for name, (strides, padding) in CNN_CONVS.items():
            out[name] = patches(h, (3, 3), strides, padding)
            h = jnp.tanh(conv(h, params[name]["w"], strides, padding) + params[name]["b"])
        out["dense_5"] = h.reshape(h.shape[0], 1, -1)
    else:
        h = x
        for name in ("dense_0", "dense_2", "dense_4"):
            out[name] = h[:, None, :]
            h = jnp.tanh(h @ params[name]["w"] + params[name]["b"])
    return {k: jnp.concatenate([v, jnp.ones((*v.shape[:2], 1))], axis=2) for k, v in out.items()}


def probe_shapes(model, params, x):
    """The pre-activation shapes, (B, T, C) after flattening the positions."""
    shapes = {}
    if model == "cnn":
        h = x
        for name, (strides, padding) in CNN_CONVS.items():
            s = conv(h, params[name]["w"], strides, padding) + params[name]["b"]
            shapes[name] = s.shape
            h = jnp.tanh(s)
        shapes["dense_5"] = (x.shape[0], CLASSES)
    else:
        shapes = {
            "dense_0": (x.shape[0], 5),
            "dense_2": (x.shape[0], 4),
            "dense_4": (x.shape[0], 3),
        }
    return shapes


def reference_factors(model, loss_kind, params, x, y, curvature):
    """funcnet's convention: A = (1/B) Σ_n Σ_t ā āᵀ, G = (1/B) Σ_n (1/T) Σ_t of δδᵀ (empirical:
    δ = ∂ℓ_n/∂s_t) or of J_tᵀ H_n J_t (GGN, J_t = ∂z_n/∂s_t, H_n the Hessian of ℓ_n in z_n),
    with ℓ_n the per-example loss (the batch loss is their mean)."""
    apply = cnn_apply if model == "cnn" else mlp_apply
    shapes = probe_shapes(model, params, x)
    probes = {k: jnp.zeros(s) for k, s in shapes.items()}
    b = x.shape[0]
    z = apply(params, x)

    def per_example_loss(zn, yn):
        if loss_kind == "ce":
            return -jax.nn.log_softmax(zn)[yn]
        return jnp.mean(jnp.square(zn - yn))

    hess = jax.vmap(jax.hessian(per_example_loss))(z, y)  # (B, K, K)
    grad_z = jax.vmap(jax.grad(per_example_loss))(z, y)  # (B, K)
    jac = jax.jacobian(lambda p: apply(params, x, p))(probes)  # name -> (B, K, B, *s)
    inputs = layer_inputs(model, params, x)
    out = {}
    for name, j in jac.items():
        j = j.reshape(b, z.shape[1], b, -1, shapes[name][-1])
        j = jnp.einsum("nknto->nkto", j)  # the batch diagonal: (B, K, T, C)
        t = j.shape[2]
        a_bar = inputs[name]
        a = jnp.einsum("nti,ntj->ij", a_bar, a_bar) / b
        if curvature == "ggn":
            g = jnp.einsum("nkto,nkl,nltp->op", j, hess, j) / (b * t)
        else:
            delta = jnp.einsum("nk,nkto->nto", grad_z, j)
            g = jnp.einsum("nto,ntp->op", delta, delta) / (b * t)
        out[name] = (a, g, t)
    return out


# --- kfac-jax --------------------------------------------------------------------------------


def block_names(estimator, params):
    """The layer name of each of the estimator's blocks, in block order."""
    names = sorted(params)
    marked = {
        n: jax.tree.map(lambda v, i=i: jnp.full(v.shape, float(i)), params[n])
        for i, n in enumerate(names)
    }
    return [
        names[int(vec[0].ravel()[0])] for vec in estimator.params_vector_to_blocks_vectors(marked)
    ]


def estimate(loss, params, batch, mode):
    """kfac-jax's factors after one update on the batch (the moving average's first update is
    this batch's estimate whatever its decay), the estimator and its state."""
    estimator = kfac_jax.BlockDiagonalCurvature(func=loss)
    key = jax.random.PRNGKey(0)
    state = estimator.init(key, (params, batch), None, None)
    state = estimator.update_curvature_matrix_estimate(
        state,
        ema_old=0.0,
        ema_new=1.0,
        identity_weight=DAMPING,
        batch_size=batch[0].shape[0],
        rng=key,
        func_args=(params, batch),
        estimation_mode=mode,
    )
    names = block_names(estimator, params)
    factors = {
        name: tuple(np.asarray(f.value) for f in s.factors)
        for name, s in zip(names, state.blocks_states, strict=True)
    }
    scales = {
        name: float(blk.fixed_scale()) for name, blk in zip(names, estimator.blocks, strict=True)
    }
    return estimator, state, factors, scales


def pi_inverse_times(a, g, damping, v):
    """(A ⊗ G + damping·I)⁻¹ vec(V) by factored Tikhonov damping with π = sqrt((tr A / dim A) /
    (tr G / dim G)): ((A + π√λ I)⁻¹ V (G + √λ/π I)⁻¹) for V of shape (dim A, dim G)."""
    pi = np.sqrt((np.trace(a) / a.shape[0]) / (np.trace(g) / g.shape[0]))
    r = np.sqrt(damping)
    return np.linalg.solve(a + pi * r * np.eye(len(a)), v) @ np.linalg.inv(
        g + r / pi * np.eye(len(g))
    )


def exact_inverse_times(a, g, damping, v):
    full = np.kron(a, g) + damping * np.eye(a.shape[0] * g.shape[0])
    return np.linalg.solve(full, v.ravel()).reshape(v.shape)


def stack(p):
    """A layer's [w; b] matrix (d_in + 1, d_out), the kernel flattened as reshape(-1, out)."""
    return np.concatenate(
        [np.asarray(p["w"]).reshape(-1, p["w"].shape[-1]), np.asarray(p["b"])[None]]
    )


def check(what, got, want, tol=TOL):
    err = float(np.max(np.abs(np.asarray(got) - np.asarray(want))))
    if not err <= tol:
        raise AssertionError(f"{what}: max abs difference {err:.3g} > {tol:g}")
    return err


def run_optimizer(loss, params, batch, ema, adaptive_damping, decay):
    """Three steps of kfac_jax.Optimizer on the same batch: adaptive learning rate and
    momentum, the exact-GGN factors refreshed and inverted (π-adjusted) every step."""
    opt = kfac_jax.Optimizer(
        value_and_grad_func=jax.value_and_grad(loss),
        l2_reg=0.0,
        use_adaptive_learning_rate=True,
        use_adaptive_momentum=True,
        use_adaptive_damping=adaptive_damping,
        initial_damping=OPT_DAMPING if adaptive_damping else None,
        damping_adaptation_interval=1,
        damping_adaptation_decay=decay,
        estimation_mode="ggn_exact",
        curvature_ema=ema,
        curvature_update_period=1,
        inverse_update_period=1,
        num_burnin_steps=0,
        multi_device=False,
    )
    key = jax.random.PRNGKey(1)
    state = opt.init(params, key, batch)
    names = block_names(opt._estimator, params)
    record = {
        k: []
        for k in (
            "loss",
            "new_loss",
            "learning_rate",
            "momentum",
            "damping",
            "next_damping",
            "rho",
            "quad_model_change",
        )
    }
    history, factor_history = [], []
    for step in range(STEPS):
        kwargs = {} if adaptive_damping else {"damping": jnp.asarray(OPT_DAMPING)}
        params, state, stats = opt.step(
            params, state, key, batch=batch, global_step_int=step, **kwargs
        )
        for k in (
            "loss",
            "new_loss",
            "learning_rate",
            "momentum",
            "damping",
            "rho",
            "quad_model_change",
        ):
            record[k].append(float(stats[k]))
        record["next_damping"].append(float(state.damping) if adaptive_damping else OPT_DAMPING)
        history.append(jax.tree.map(np.asarray, params))
        factor_history.append(
            {
                name: tuple(np.asarray(f.value) for f in s.factors)
                for name, s in zip(names, state.estimator_state.blocks_states, strict=True)
            }
        )
    return record, history, factor_history


def check_optimizer(model, loss_kind, params0, x, y, run, record, history, factor_history, scales):
    """Replays the three steps from funcnet's conventions: the EMA of the factors, the
    π-adjusted preconditioned gradient, the quadratic model's coefficients, the damping rule."""
    apply = cnn_apply if model == "cnn" else mlp_apply
    ema, _, decay = run
    b = x.shape[0]
    loss_fn = (
        (lambda p: softmax_ce(apply(p, x), y))
        if loss_kind == "ce"
        else (lambda p: mse(apply(p, x), y))
    )

    def per_example_hessian(z):
        if loss_kind == "ce":
            p = jax.nn.softmax(z)
            return jax.vmap(lambda q: jnp.diag(q) - jnp.outer(q, q))(p)
        return jnp.broadcast_to(2.0 / CLASSES * jnp.eye(CLASSES), (b, CLASSES, CLASSES))

    def ggn_quad(p, u, v):  # uᵀ (1/B Σ_n J_nᵀ H_n J_n) v
        z, ju = jax.jvp(lambda q: apply(q, x), (p,), (u,))
        _, jv = jax.jvp(lambda q: apply(q, x), (p,), (v,))
        return float(jnp.einsum("nk,nkl,nl->", ju, per_example_hessian(z), jv) / b)

    def inner(u, v):
        return float(
            sum(jnp.vdot(a, c) for a, c in zip(jax.tree.leaves(u), jax.tree.leaves(v), strict=True))
        )

    params, velocity, damping = params0, jax.tree.map(jnp.zeros_like, params0), OPT_DAMPING
    weight, running = 0.0, None
    for step in range(STEPS):
        fresh = reference_factors(model, loss_kind, params, x, y, "ggn")
        weight = ema * weight + 1.0
        eta = 1.0 / weight
        running = {
            k: (a, g)
            if running is None
            else ((1 - eta) * running[k][0] + eta * a, (1 - eta) * running[k][1] + eta * g)
            for k, (a, g, _) in fresh.items()
        }
        for k, (a, g) in running.items():  # kfac-jax's A is funcnet's / T for a conv
            check(f"{model} step {step} {k} A", factor_history[step][k][0] * scales[k], a)
            check(f"{model} step {step} {k} G", factor_history[step][k][1], g)
        grads = jax.grad(loss_fn)(params)
        used = record["damping"][step]
        check(f"{model} step {step} damping", used, damping)
        precon = {}
        for k, (a, g) in running.items():
            shape = params[k]["w"].shape
            m = pi_inverse_times(a, g, used, stack(grads[k]))
            precon[k] = {"w": m[:-1].reshape(shape), "b": m[-1]}
        vecs = [precon, velocity]
        quad = np.array([[ggn_quad(params, u, v) for v in vecs] for u in vecs])
        dots = np.array([[inner(u, v) for v in vecs] for u in vecs])
        lin = np.array([inner(grads, v) for v in vecs])
        damped = quad + used * dots
        if step == 0:  # zero velocity: the learning rate alone
            w = np.array([-lin[0] / damped[0, 0], 0.0])
        else:
            w = -np.linalg.solve(damped, lin)
        check(f"{model} step {step} learning rate", record["learning_rate"][step], -w[0], 1e-8)
        check(f"{model} step {step} momentum", record["momentum"][step], w[1], 1e-8)
        change = 0.5 * w @ quad @ w + w @ lin
        check(f"{model} step {step} quad change", record["quad_model_change"][step], change, 1e-10)
        delta = jax.tree.map(lambda u, v, w=w: w[0] * u + w[1] * v, precon, velocity)
        params = jax.tree.map(jnp.add, params, delta)
        velocity = delta
        check(
            f"{model} step {step} params",
            np.concatenate([np.ravel(v) for v in jax.tree.leaves(params)]),
            np.concatenate([np.ravel(v) for v in jax.tree.leaves(history[step])]),
            1e-9,
        )
        if not np.isnan(record["rho"][step]):  # adaptive damping, adapted every step
            rho = (
                float(loss_fn(params)) - float(loss_fn(jax.tree.map(jnp.subtract, params, delta)))
            ) / change
            check(f"{model} step {step} rho", record["rho"][step], rho, 1e-7)
            factor = decay  # damping_adaptation_decay ** damping_adaptation_interval
            if rho > 0.75:
                damping *= factor
            elif rho < 0.25:
                damping /= factor
            check(f"{model} step {step} next damping", record["next_damping"][step], damping)


# --- The fixture -----------------------------------------------------------------------------


def main(path: str) -> None:
    rng = np.random.default_rng(20240607)
    data = {}
    cases = {
        "mlp": (
            "mlp",
            "ce",
            mlp_params(rng),
            rng.normal(size=(BATCH_MLP, 6)),
            rng.integers(0, CLASSES, BATCH_MLP),
        ),
        "cnn": (
            "cnn",
            "ce",
            cnn_params(rng),
            rng.normal(size=(BATCH_CNN, 6, 6, 2)),
            rng.integers(0, CLASSES, BATCH_CNN),
        ),
    }
    se_params = mlp_params(rng)
    cases["mlp_se"] = (
        "mlp",
        "se",
        se_params,
        rng.normal(size=(BATCH_MLP, 6)),
        rng.normal(size=(BATCH_MLP, CLASSES)),
    )
    errors = {}
    for case, (model, loss_kind, params, x, y) in cases.items():
        apply = cnn_apply if model == "cnn" else mlp_apply
        params = jax.tree.map(jnp.asarray, params)
        x, y = jnp.asarray(x), jnp.asarray(y)
        loss = make_loss(apply, loss_kind)
        batch = (x, y)
        b = x.shape[0]
        data[f"{case}/x"], data[f"{case}/y"] = np.asarray(x), np.asarray(y)
        for name, layer in params.items():
            for leaf, value in layer.items():
                data[f"{case}/params/{name}/{leaf}"] = np.asarray(value)
        data[f"{case}/loss"] = np.asarray(loss(params, batch))
        grads = jax.grad(loss)(params, batch)
        for mode, curvature in (
            ("ggn_exact", "ggn"),
            ("fisher_exact", "ggn"),
            ("fisher_empirical", "empirical"),
        ):
            estimator, state, factors, scales = estimate(loss, params, batch, mode)
            want = reference_factors(model, loss_kind, params, x, y, curvature)
            for name, (a, g) in factors.items():
                a_ref, g_ref, t = want[name]
                check(f"{case} {mode} {name} scale", scales[name], t)
                data[f"{case}/scale/{name}"] = np.asarray(scales[name])
                # kfac-jax: A = Σ ā āᵀ / (B·T), G = Σ δδᵀ / (B·T), the block scaled by T.
                errors[f"{case} {mode} {name} A"] = check(f"{case} {mode} {name} A", a * t, a_ref)
                g_scale = b if mode == "fisher_empirical" else 1.0  # kfac-jax's extra 1/B
                errors[f"{case} {mode} {name} G"] = check(
                    f"{case} {mode} {name} G", g * g_scale, g_ref
                )
                if mode == "ggn_exact":
                    data[f"{case}/{mode}/{name}/a"] = a
                if mode != "fisher_exact":  # A is the same in every mode
                    data[f"{case}/{mode}/{name}/g"] = g
            if mode == "ggn_exact":
                for exact in (False, True):
                    precon = estimator.multiply_inverse(
                        state,
                        grads,
                        identity_weight=DAMPING,
                        exact_power=exact,
                        use_cached=False,
                        pmap_axis_name=None,
                    )
                    tag = "exact" if exact else "pi"
                    for name, (a_ref, g_ref, _) in want.items():
                        v = stack(grads[name])
                        own = (exact_inverse_times if exact else pi_inverse_times)(
                            a_ref, g_ref, DAMPING, v
                        )
                        errors[f"{case} precon {tag} {name}"] = check(
                            f"{case} precon {tag} {name}", stack(precon[name]), own
                        )
                        for leaf, value in precon[name].items():
                            data[f"{case}/precon_{tag}/{name}/{leaf}"] = np.asarray(value)
                for name, layer in grads.items():
                    for leaf, value in layer.items():
                        data[f"{case}/grad/{name}/{leaf}"] = np.asarray(value)
        if case == "mlp_se":
            continue
        for tag, run in RUNS.items():
            record, history, factor_history = run_optimizer(loss, params, batch, *run)
            check_optimizer(
                model, loss_kind, params, x, y, run, record, history, factor_history, scales
            )
            data[f"{case}/{tag}/curvature_ema"] = np.asarray(run[0])
            data[f"{case}/{tag}/damping_adaptation_decay"] = np.asarray(run[2])
            for k, v in record.items():
                data[f"{case}/{tag}/{k}"] = np.asarray(v)
            for step, p in enumerate(history):
                for name, layer in p.items():
                    for leaf, value in layer.items():
                        data[f"{case}/{tag}/step{step + 1}/{name}/{leaf}"] = value
    data["meta"] = np.asarray(json.dumps(META, indent=1))
    np.savez_compressed(path, **data)
    print(f"wrote {path}: {len(data)} arrays; worst self-check {max(errors.values()):.2g}")


META = {
    "versions": {
        "kfac-jax": kfac_jax.__version__,
        "jax": jax.__version__,
        "jaxlib": jax.lib.__version__,
        "numpy": np.__version__,
    },
    "dtype": "float64 (jax_enable_x64)",
    "models": {
        "mlp": (
            "serial(dense(5), tanh, dense(4), tanh, dense(3)), softmax_cross_entropy (batch mean), "
            "x (8, 6), integer labels"
        ),
        "cnn": (
            "serial(conv(3, (3, 3), padding='SAME'), tanh, conv(4, (3, 3), strides=2, "
            "padding='VALID'), tanh, flatten(), dense(3)), softmax_cross_entropy, x (4, 6, 6, 2) "
            "NHWC"
        ),
        "mlp_se": (
            "the mlp's architecture (its own params) with funcnet.losses.mse (mean over batch and "
            "outputs), registered as register_squared_error_loss(weight=1/3)"
        ),
    },
    "keys": {
        "<case>/params/<layer>/<w|b>": "the parameters, funcnet's layout and names",
        "<case>/x, <case>/y, <case>/loss, <case>/grad/...": "the batch, the loss and its gradient",
        "<case>/ggn_exact/<layer>/<a|g>, <case>/fisher_empirical/<layer>/g": (
            "kfac-jax's factors (kfac-jax's normalisation, below) after one update on the batch (A "
            "is the same in every mode)"
        ),
        "<case>/scale/<layer>": (
            "the block's fixed_scale(): T for a conv (the curvature is T·A⊗G), 1 for a dense layer"
        ),
        "<case>/precon_<pi|exact>/<layer>/<w|b>": (
            f"estimator.multiply_inverse(grad) with identity_weight {DAMPING}, from the ggn_exact "
            f"factors; pi: exact_power=False (factored Tikhonov with π), exact: exact_power=True "
            f"(eigenbasis, (T·A⊗G + λI)⁻¹ exactly)"
        ),
        "<case>/opt_<fixed|adaptive>_damping/...": (
            "three kfac_jax.Optimizer steps on the same batch; per step: loss, new_loss (NaN when "
            "not computed), learning_rate, momentum, damping (used in the step), next_damping, rho "
            "(NaN when not computed), quad_model_change; step<k>/...: the params after step k"
        ),
    },
    "factors": (
        "Dense (DenseTwoKroneckerFactored, curvature_blocks/kronecker_factored.py:427-461): ā = "
        "[x, 1] (bias last), A = Σ_n ā āᵀ / B, G = Σ_n dy dyᵀ / B. Conv "
        "(Conv2DTwoKroneckerFactored, kronecker_factored.py:569-721): patches ordered (kh, kw, C) "
        "(patches_second_moment.py:686-916; the kernel's spec 'abcd -> (abc)d', "
        "kronecker_factored.py:94-105, i.e. an HWIO kernel's reshape(-1, out)), zero padding "
        "inside the patches, ā = [patch, 1]; A = Σ_n Σ_t ā āᵀ / (B·T) (the corner is 1), G = Σ_n "
        "Σ_t dy dyᵀ / (B·T), and the block's fixed_scale() is T (kronecker_factored.py:572-573), "
        "so the curvature is T·A⊗G. funcnet's convention (A = Σ_nΣ_t āāᵀ / B, G = Σ_n (1/T)Σ_t δδᵀ "
        "/ B) gives A_funcnet = T·A_kfac, G_funcnet = G_kfac: the same A⊗G·T. T = 1 for dense "
        "layers; T = 36 for conv_0 (6×6 SAME) and T = 4 for conv_2 (2×2 VALID stride 2)."
    ),
    "estimation_modes": (
        "curvature_estimator/block_diagonal.py:689-888. ggn_exact / fisher_exact: dy = Jᵀ "
        "H_n^{1/2} e_k summed over every output index k (one-hot loop, ema_new / K per index and "
        "the vectors times √K, block_diagonal.py:833-884): the exact per-example GGN at the "
        "pre-activations, G = Σ_n Σ_t J_tᵀ H_n J_t /(B·T). For softmax CE and squared error Fisher "
        "= GGN (NaturalParamsNegativeLogProbLoss), checked equal here. ggn_curvature_prop / "
        "fisher_curvature_prop draw Rademacher vectors (block_diagonal.py:801-831): a one-sample "
        "stochastic estimate, not the exact GGN, so they are not stored. fisher_empirical: dy = "
        "∂(Σ_n weight·ℓ_n)/∂s / √B (block_diagonal.py:740-766), so G_kfac = Σ_n δ_n δ_nᵀ / B² with "
        "δ_n the per-example loss gradient: 1/B times funcnet's empirical G (= Σ_n δ_n δ_nᵀ / B). "
        "A is the same in every mode. The factors are WeightedMovingAverage "
        "(utils/accumulators.py:46-86): weight ← ema_old·weight + ema_new, value ← (1 − "
        "ema_new/weight)·value + (ema_new/weight)·new, so the first update gives the batch's "
        "estimate whatever the decay."
    ),
    "losses": (
        "loss_functions.py:1116-1454 (NormalMean 540-655, squared error 1186-1236, softmax CE "
        "1414-1454). register_softmax_cross_entropy_loss(logits, y, weight=1): weight·Σ_n CE_n / "
        "B, i.e. funcnet's softmax_cross_entropy (batch mean); H_n = diag(p) − p pᵀ. "
        "register_squared_error_loss(pred, y, weight=w) is w·Σ_n Σ_j (pred − y)² / B with no ½ (a "
        "NormalMean loss of variance 0.5, H_n = 2w·I); funcnet's mse averages over the outputs as "
        "well, so it is w = 1/outputs (1/3 here, H_n = (2/3)·I). Non-batch dimensions are summed, "
        "not averaged."
    ),
    "damping": (
        "Block multiply_matpower (curvature_block.py:253-303) passes identity_weight/scale to the "
        "unscaled block and multiplies the result by scale^power. exact_power=False, power −1 "
        "(kronecker_factored.py:282-327; utils/math.py:631-750 pi_adjusted_kronecker_factors): "
        "with norms n_A = tr(A)/dim A, n_G = tr(G)/dim G ('avg_diag'), c = √(n_A n_G), d = √λ'/c, "
        "the inverse is (A/n_A + d I)⁻¹c⁻¹ ⊗ (G/n_G + d I)⁻¹c⁻¹, i.e. (A + π√λ' I)⁻¹ ⊗ (G + √λ'/π "
        "I)⁻¹ with π = √(n_A/n_G), λ' = λ/T. That is invariant to moving T between A and G, so "
        "funcnet's factors with λ give the same result. exact_power=True: (T·A⊗G + λI)⁻¹ in the "
        "factors' eigenbases."
    ),
    "optimizer": (
        f"optimizer.py. Settings: l2_reg 0, use_adaptive_learning_rate and use_adaptive_momentum "
        f"True, estimation_mode ggn_exact, curvature_ema 0.95 (fixed damping) or 0 (adaptive), "
        f"curvature_update_period 1, inverse_update_period 1 (no cached inverses: factors inverted "
        f"fresh with π every step), num_burnin_steps 0, damping {OPT_DAMPING} fixed or (adaptive) "
        f"initial_damping {OPT_DAMPING}, damping_adaptation_interval 1, damping_adaptation_decay "
        f"0.95 (0.9 unused in the fixed run; stored as <case>/<run>/curvature_ema and "
        f"damping_adaptation_decay). Each step (_step, optimizer.py:1181-1366): update the factors "
        f"with ema_old = curvature_ema, ema_new = 1 (a bias-corrected EMA: value = Σ_s ema^(t−s) "
        f"F_s / Σ_s ema^(t−s)), Δ = (F̂ + λI)⁻¹ g (π-adjusted), vectors V = (Δ, v) with v the "
        f"previous update (0 at the first step). Quadratic model (optimizer.py:67-88, "
        f"_compute_exact_quad_model 1618-1660): A_q = Vᵀ C V with C the exact GGN of the "
        f"batch-mean loss ((1/B)Σ_n J_nᵀ H_n J_n, implicit_exact.py:373-395), D = Vᵀ V, b = Vᵀ g; "
        f"_solve_quad_model (optimizer.py:1708-1786): w = −(A_q + λD)⁻¹ b (only the first "
        f"coefficient while v = 0, then momentum is 0), learning_rate = −w₀, momentum = w₁, update "
        f"= w₀Δ + w₁v. quad_model_change = ½ wᵀ A_q w + wᵀ b (no damping term, "
        f"include_damping_in_quad_change False). Adaptive damping (_compute_new_damping_and_rho, "
        f"optimizer.py:1789-1812; the interval test _should_update_damping, 660-664), when (step + "
        f"1) % damping_adaptation_interval == 0: ρ = (loss(θ + update) − loss(θ)) / "
        f"quad_model_change on the same batch; factor = damping_adaptation_decay ** "
        f"damping_adaptation_interval; ρ < 0.25: λ ← λ/factor; ρ > 0.75: λ ← λ·factor; clipped to "
        f"[min_damping 1e-8, max_damping ∞]. The new λ is used from the next step."
    ),
}

if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/data/kfac_jax_0.0.8.npz")
