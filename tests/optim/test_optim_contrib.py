"""The optimizers of optax's contrib level (`funcnet.optim.contrib`) against optax itself.

Each runs STEPS steps of gradient descent on one smooth problem beside optax's function of
the same name with the same arguments, in float64, and the two agree to 1e-10 at every step:
the params the gradient is taken at, and the params to evaluate (lookahead's slow params,
Schedule-Free's average). optax is the reference only here; funcnet does not import it. All
the cases of an optimizer run in one jitted `lax.scan`.
"""

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import optax.contrib
import pytest
from jax import lax
from optim_helpers import flat

import funcnet.optim as fo
from funcnet import losses, nn, train

pytestmark = pytest.mark.usefixtures("x64")

STEPS = 24
SHAPES = {"w": (5, 3), "b": (4,), "k": (2, 3, 4)}


def _problem():
    """Params, and a smooth non-negative loss of them with a different curvature per entry."""
    rng = np.random.default_rng(0)
    params = {name: jnp.asarray(rng.standard_normal(shape)) for name, shape in SHAPES.items()}
    targets = {name: jnp.asarray(rng.standard_normal(shape)) for name, shape in SHAPES.items()}
    scales = {name: jnp.asarray(rng.uniform(0.5, 3.0, shape)) for name, shape in SHAPES.items()}

    def loss(p):
        total = 0.0
        for name in SHAPES:
            r = p[name] - targets[name]
            total = total + jnp.sum(0.5 * scales[name] * r**2 + 0.05 * r**4)
            total = total + 0.1 * jnp.mean(r) ** 2
        return total

    return params, loss


class Run:
    """One optimizer's run: `start(params)` the params it holds, `at(p)` the params the
    gradient is taken at, `seen(p, state)` the pair compared at each step (the params the
    gradient is taken at, the params to evaluate)."""

    def __init__(self, opt, apply, start, at, seen, extra=None):
        self.opt, self.apply, self.start, self.at, self.seen = opt, apply, start, at, seen
        self.extra = extra or (lambda value, g, loss: dict(value=value, grad=g, value_fn=loss))


def _ours(opt, evaluate):
    return Run(opt, fo.apply_updates, lambda p: p, lambda p: p, lambda p, s: (p, evaluate(p, s)))


def _alone(opt, apply=fo.apply_updates, extra=None):
    """A run compared on its params alone."""
    same = lambda p: p
    return Run(opt, apply, same, same, lambda p, s: (p,), extra)


def _paths(runs, params, loss, steps=STEPS):
    """What each run `seen` after each step, all runs in one jitted scan. Optimizers that take
    extra args get `value`, `grad` and `value_fn`, or the run's own `extra`."""

    def run(params):
        def step(carry, _):
            new_carry, out = [], []
            for r, (p, state) in zip(runs, carry, strict=True):
                value, g = jax.value_and_grad(loss)(r.at(p))
                if fo.accepts_extra_args(r.opt):
                    updates, state = r.opt.update(g, state, p, **r.extra(value, g, loss))
                else:
                    updates, state = r.opt.update(g, state, p)
                p = r.apply(p, updates)
                new_carry.append((p, state))
                out.append(r.seen(p, state))
            return new_carry, out

        carry = []
        for r in runs:
            p = r.start(params)
            carry.append((p, r.opt.init(p)))
        _, paths = lax.scan(step, carry, None, length=steps)
        return paths

    return jax.jit(run, compiler_options={"xla_backend_optimization_level": 0})(params)


def _assert_pairs_agree(paths, params, rtol=1e-10):
    for got, want in zip(paths[::2], paths[1::2], strict=True):
        for got_part, want_part in zip(got, want, strict=True):
            g, w = flat(got_part, 1), flat(want_part, 1)
            assert g.dtype == np.float64
            assert np.all(np.isfinite(g))
            assert np.abs(g[-1] - flat(params)).max() > 1e-3  # the params moved
            np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol)


# Lookahead: funcnet keeps the slow params in the state, optax in `LookaheadParams`.


def _lookahead_pair(fast_ours, fast_theirs, sync_period, slow_step_size, reset_state):
    ours = fo.lookahead(fast_ours, sync_period, slow_step_size, reset_state=reset_state)
    theirs = optax.lookahead(fast_theirs, sync_period, slow_step_size, reset_state=reset_state)
    return [
        _ours(ours, lambda p, s: fo.lookahead_slow_params(s)),
        Run(
            theirs,
            optax.apply_updates,
            optax.LookaheadParams.init_synced,
            lambda p: p.fast,
            lambda p, s: (p.fast, p.slow),
        ),
    ]


def test_lookahead_matches_optax_in_float64():
    params, loss = _problem()
    runs = (
        _lookahead_pair(fo.radam(0.05), optax.radam(0.05), 5, 0.5, False)
        + _lookahead_pair(fo.amsgrad(0.05), optax.amsgrad(0.05), 3, 0.8, True)
        + _lookahead_pair(fo.adabelief(0.05), optax.adabelief(0.05), 1, 1.0, False)
    )
    paths = _paths(runs, params, loss)
    _assert_pairs_agree(paths, params)
    # Between syncs the slow params stand still; at a sync the fast ones land on them.
    fast, slow = (flat(x, 1) for x in paths[0])
    np.testing.assert_array_equal(slow[0], slow[3])
    np.testing.assert_allclose(fast[4], slow[4], rtol=1e-15, atol=1e-15)
    assert np.abs(fast[3] - slow[3]).max() > 1e-3


def test_lookahead_passes_extra_args_to_a_fast_optimizer_that_takes_them():
    params, loss = _problem()
    plain = fo.lookahead(fo.radam(0.05), 4, 0.5)
    extra = fo.lookahead(fo.polyak_sgd(0.1), 4, 0.5)
    assert not fo.accepts_extra_args(plain)
    assert fo.accepts_extra_args(extra)
    # With one sync step and α = 1 lookahead is its fast optimizer.
    paths = _paths(
        [
            _alone(fo.lookahead(fo.polyak_sgd(0.1), 1, 1.0)),
            _alone(fo.polyak_sgd(0.1)),
        ],
        params,
        loss,
        steps=6,
    )
    _assert_pairs_agree(paths, params, rtol=1e-14)


# Schedule-Free: the params the gradient is taken at (y) and the eval params (x).


def _warmup(count):
    return 0.05 * jnp.minimum(1.0, jnp.asarray(count, jnp.float64) / 4)


def _optax_warmup(peak, steps):
    """optax's warm-up of `schedule_free_sgd` and `_adamw` (`warmup_constant_schedule`) in
    float64: optax computes it in float32 from the int32 count, and XLA rounds it differently
    in each graph (1e-8 apart); funcnet computes it in the default float."""
    warmup = optax.warmup_constant_schedule(0.0, peak, steps)
    return lambda count: warmup(jnp.asarray(count, jnp.float64))


def _schedule_free_pair(ours, theirs):
    return [
        _ours(ours, lambda p, s: fo.schedule_free_eval_params(s, p)),
        Run(
            theirs,
            optax.apply_updates,
            lambda p: p,
            lambda p: p,
            lambda p, s: (p, optax.contrib.schedule_free_eval_params(s, p)),
        ),
    ]


def test_schedule_free_matches_optax_in_float64():
    params, loss = _problem()
    contrib = optax.contrib
    runs = (
        _schedule_free_pair(fo.schedule_free_sgd(0.05), contrib.schedule_free_sgd(0.05))
        + _schedule_free_pair(
            fo.schedule_free_sgd(0.1, warmup_steps=5, b1=0.8, weight_decay=1e-2),
            contrib.schedule_free(
                optax.chain(optax.add_decayed_weights(1e-2), optax.sgd(_optax_warmup(0.1, 5))),
                _optax_warmup(0.1, 5),
                b1=0.8,
            ),
        )
        + _schedule_free_pair(fo.schedule_free_adamw(0.05), contrib.schedule_free_adamw(0.05))
        + _schedule_free_pair(
            fo.schedule_free_adamw(
                0.1, warmup_steps=4, b1=0.95, b2=0.99, weight_decay=1e-2, weight_lr_power=1.0
            ),
            contrib.schedule_free(
                optax.chain(
                    optax.scale_by_rms(0.99, 1e-8, eps_in_sqrt=False, bias_correction=True),
                    optax.add_decayed_weights(1e-2),
                    optax.scale_by_learning_rate(_optax_warmup(0.1, 4)),
                ),
                _optax_warmup(0.1, 4),
                b1=0.95,
                weight_lr_power=1.0,
            ),
        )
        + _schedule_free_pair(
            fo.schedule_free(fo.amsgrad(_warmup, b1=0.0), _warmup),
            contrib.schedule_free(optax.amsgrad(_warmup, b1=0.0), _warmup),
        )
    )
    paths = _paths(runs, params, loss)
    _assert_pairs_agree(paths, params)
    # The paper's SGD form (constant rate: the average weights c_t = 1/t), as a NumPy loop.
    ravel = jax.flatten_util.ravel_pytree
    x, unravel = ravel(params)
    x, z, lr, b1 = np.asarray(x), np.asarray(x), 0.05, 0.9
    ys, xs = [], []
    for t in range(1, STEPS + 1):
        y = b1 * x + (1 - b1) * z
        z = z - lr * np.asarray(ravel(jax.grad(loss)(unravel(y)))[0])
        x = (1 - 1 / t) * x + z / t
        ys.append(b1 * x + (1 - b1) * z)
        xs.append(x)
    got_y, got_x = (flat(tree, 1) for tree in paths[0])
    np.testing.assert_allclose(got_y, np.stack(ys), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(got_x, np.stack(xs), rtol=1e-10, atol=1e-10)


def test_schedule_free_eval_params_wants_its_state():
    params = {"w": jnp.ones(3)}
    with pytest.raises(ValueError, match="schedule_free_eval_params: needs a ScheduleFreeState"):
        fo.schedule_free_eval_params(fo.adam(1e-3).init(params), params)
    with pytest.raises(ValueError, match="lookahead_slow_params: needs a LookaheadState"):
        fo.lookahead_slow_params(fo.adam(1e-3).init(params))
    opt = fo.schedule_free_sgd(0.1)
    with pytest.raises(ValueError, match="schedule_free: update needs the params"):
        opt.update(params, opt.init(params))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: fo.lookahead(fo.sgd(0.1), 0, 0.5), "lookahead: sync_period must be a positive"),
        (lambda: fo.lookahead(fo.sgd(0.1), 2.0, 0.5), "lookahead: sync_period must be a positive"),
        (lambda: fo.lookahead(fo.sgd(0.1), 5, 1.5), "lookahead: slow_step_size must lie in"),
        (lambda: fo.schedule_free(fo.sgd(0.1), 0.0), "schedule_free: learning_rate must be"),
        (lambda: fo.schedule_free(fo.sgd(0.1), 0.1, b1=1.0), "schedule_free: b1 must lie in"),
        (lambda: fo.schedule_free(fo.sgd(0.1), 0.1, b1=0.0), "schedule_free: b1 must be a"),
        (
            lambda: fo.schedule_free(fo.sgd(0.1), 0.1, weight_lr_power=-1.0),
            "schedule_free: weight_lr_power must be",
        ),
        (lambda: fo.schedule_free_sgd(-1.0), "schedule_free_sgd: learning_rate must be"),
        (lambda: fo.schedule_free_sgd(weight_decay=-1.0), "schedule_free_sgd: weight_decay"),
        (lambda: fo.schedule_free_sgd(warmup_steps=0), "schedule_free: warmup_steps must be"),
        (lambda: fo.schedule_free_adamw(b2=1.0), "schedule_free_adamw: b2 must lie in"),
        (lambda: fo.schedule_free_adamw(eps=0.0), "schedule_free_adamw: eps must be"),
        (lambda: fo.schedule_free_adamw(weight_decay=-0.1), "schedule_free_adamw: weight_decay"),
        (lambda: fo.prodigy(0.0), "prodigy: learning_rate must be"),
        (lambda: fo.prodigy(betas=(0.9, 1.0)), "prodigy: betas\\[1\\] must lie in"),
        (lambda: fo.prodigy(beta3=-0.1), "prodigy: beta3 must lie in"),
        (lambda: fo.prodigy(estim_lr0=0.0), "prodigy: estim_lr0 must be a finite number > 0"),
        (lambda: fo.prodigy(weight_decay=-1.0), "prodigy: weight_decay must be"),
        (lambda: fo.sam(fo.sgd(0.1), rho=0.0), "sam: rho must be a finite number > 0"),
        (lambda: fo.sam(fo.sgd(0.1), eta=-1.0), "sam: eta must be a finite number >= 0"),
        (lambda: fo.muon(0.0), "muon: learning_rate must be"),
        (lambda: fo.muon(0.1, beta=1.0), "muon: beta must lie in"),
        (lambda: fo.muon(0.1, ns_steps=0), "muon: ns_steps must be a positive int"),
        (lambda: fo.muon(0.1, ns_coeffs=(1.0, 2.0)), "muon: ns_coeffs must be a triple"),
        (lambda: fo.muon(0.1, fallback="sgd"), "muon: fallback must be 'adam' or None"),
        (lambda: fo.muon(0.1, adam_b2=1.5), "muon: adam_b2 must lie in"),
        (lambda: fo.muon(0.1, adam_learning_rate=-1.0), "muon: adam_learning_rate must be"),
        (lambda: fo.muon(0.1, consistent_rms=0.0), "muon: consistent_rms must be"),
    ],
)
def test_bad_hyperparameters_are_refused_in_one_line(make, message):
    with pytest.raises(ValueError, match=message) as error:
        make()
    assert "\n" not in str(error.value)


# Muon: the matrices by Newton–Schulz, the rest by Adam, against optax.contrib.muon.

MUON_SHAPES = {"w": (5, 3), "v": (3, 6), "b": (4,), "k": (2, 3, 4)}


def _muon_problem():
    """The catalogue's problem on a tall matrix, a wide one, a vector and a 3-D array."""
    global SHAPES
    saved, SHAPES = SHAPES, MUON_SHAPES
    try:
        return _problem()
    finally:
        SHAPES = saved


def _plain_pair(ours, theirs):
    return [_alone(ours), _alone(theirs, optax.apply_updates)]


def _optax_schedule(count):
    return 0.05 / (1 + 0.1 * jnp.asarray(count, jnp.float64))


def test_muon_matches_optax_in_float64():
    params, loss = _muon_problem()
    dims = optax.contrib.MuonDimensionNumbers()
    runs = (
        _plain_pair(fo.muon(0.05), optax.contrib.muon(0.05))
        + _plain_pair(
            fo.muon(
                _optax_schedule,
                beta=0.9,
                nesterov=False,
                adaptive=True,
                weight_decay=1e-2,
                consistent_rms=0.2,
                adam_learning_rate=0.02,
                adam_b2=0.99,
                adam_weight_decay=1e-2,
            ),
            optax.contrib.muon(
                _optax_schedule,
                beta=0.9,
                nesterov=False,
                adaptive=True,
                weight_decay=1e-2,
                consistent_rms=0.2,
                adam_learning_rate=0.02,
                adam_b2=0.99,
                adam_weight_decay=1e-2,
            ),
        )
        + _plain_pair(
            fo.muon(
                0.05,
                ns_steps=3,
                muon_mask={"w": True, "v": False, "b": False, "k": False},
                weight_decay=1e-2,
                weight_decay_mask={"w": True, "v": False, "b": False, "k": False},
            ),
            optax.contrib.muon(
                0.05,
                ns_steps=3,
                muon_weight_dimension_numbers={"w": dims, "v": None, "b": None, "k": None},
                weight_decay=1e-2,
                weight_decay_mask={"w": True, "v": False, "b": False, "k": False},
            ),
        )
    )
    paths = _paths(runs, params, loss)
    _assert_pairs_agree(paths, params, rtol=1e-8)


def test_newton_schulz_nears_the_polar_factor():
    rng = np.random.default_rng(3)
    for shape in [(6, 4), (4, 6)]:
        x = rng.standard_normal(shape)
        got = np.asarray(fo.orthogonalize_via_newton_schulz(jnp.asarray(x), ns_steps=10))
        u, _, vt = np.linalg.svd(x, full_matrices=False)
        # The quintic leaves the singular values in about [0.7, 1.2], the vectors exact.
        s = np.linalg.svd(got, compute_uv=False)
        assert s.min() > 0.6 and s.max() < 1.25
        np.testing.assert_allclose(u.T @ got @ vt.T, np.diag(np.diag(u.T @ got @ vt.T)), atol=1e-8)


def test_muon_refuses_a_vector_without_a_fallback_in_one_line():
    params, _ = _muon_problem()
    cases = [
        (
            lambda: fo.muon(0.05, fallback=None).init(params),
            r"muon: param \['b'\] of shape \(4,\) is not a matrix.*fallback='adam'",
        ),
        (
            lambda: fo.muon(0.05, muon_mask={"w": True, "v": True, "b": True, "k": False}).init(
                params
            ),
            r"muon: param \['b'\] of shape \(4,\) is not a matrix.*leave it out of muon_mask",
        ),
        (
            lambda: fo.muon(
                0.05, fallback=None, muon_mask={"w": True, "v": True, "b": False, "k": False}
            ).init(params),
            r"muon: param \['b'\] of shape \(4,\) is left out of muon_mask and fallback",
        ),
        (
            lambda: fo.scale_by_muon().init({"dense": {"b": jnp.ones(3)}}),
            r"scale_by_muon: param \['dense'\]\['b'\] of shape \(3,\) is not a matrix",
        ),
        (
            lambda: jax.jit(
                lambda g: fo.scale_by_muon().update(
                    g, fo.scale_by_muon().init({"w": jnp.ones((2, 2))})
                )
            )({"w": jnp.ones((2, 2, 1))}),
            r"scale_by_muon: param \['w'\] of shape \(2, 2, 1\) is not a matrix",
        ),
    ]
    for make, message in cases:
        with pytest.raises(ValueError, match=message) as error:
            make()
        assert "\n" not in str(error.value)


# Prodigy: Adam with its step size estimated.


def test_prodigy_matches_optax_in_float64():
    params, loss = _problem()
    settings = dict(
        betas=(0.85, 0.99), beta3=0.9, estim_lr0=1e-4, estim_lr_coef=0.5, weight_decay=1e-2
    )
    runs = (
        _plain_pair(fo.prodigy(), optax.contrib.prodigy())
        + _plain_pair(fo.prodigy(0.5, **settings), optax.contrib.prodigy(0.5, **settings))
        + _plain_pair(
            fo.prodigy(_warmup_to_one, estim_lr0=1e-3, safeguard_warmup=True),
            optax.contrib.prodigy(_warmup_to_one, estim_lr0=1e-3, safeguard_warmup=True),
        )
    )
    # From d₀ = 1e-6 the estimate takes some 30 steps to grow to the problem's scale.
    paths = _paths(runs, params, loss, steps=48)
    _assert_pairs_agree(paths, params)
    final = jax.tree.map(lambda a: a[-1], paths[0][0])
    assert loss(final) < 0.05 * loss(params)


def _warmup_to_one(count):
    """A warm-up to the multiplier 1, as Prodigy's paper schedules it."""
    return jnp.minimum(1.0, (jnp.asarray(count, jnp.float64) + 1) / 8)


# SAM and ASAM: against the papers' algorithm as a NumPy loop, and against optax's opaque SAM.


def _numpy_sam(params, loss, lr, rho, adaptive=False, eta=0.01, steps=20):
    """Foret et al.'s Algorithm 1 with plain SGD as the base step (Kwon et al.'s ASAM with
    `adaptive`), in NumPy on the flat params; only the gradients come from JAX."""
    x, unravel = jax.flatten_util.ravel_pytree(params)
    x = np.asarray(x)

    flat_grad = jax.jit(lambda v: jax.flatten_util.ravel_pytree(jax.grad(loss)(unravel(v)))[0])

    def grad(v):
        return np.asarray(flat_grad(v))

    path = []
    for _ in range(steps):
        g = grad(x)
        if adaptive:
            t = np.abs(x) + eta
            eps = rho * t**2 * g / np.linalg.norm(t * g)
        else:
            eps = rho * g / np.linalg.norm(g)
        x = x - lr * grad(x + eps)
        path.append(x)
    return np.stack(path)


def test_sam_and_asam_follow_the_papers_algorithm():
    params, loss = _problem()
    runs = [
        _alone(fo.sam(fo.sgd(0.02), rho=0.1)),
        _alone(fo.sam(fo.sgd(0.02), rho=0.5, adaptive=True, eta=0.1)),
    ]
    paths = _paths(runs, params, loss, steps=20)
    wants = [
        _numpy_sam(params, loss, 0.02, 0.1),
        _numpy_sam(params, loss, 0.02, 0.5, adaptive=True, eta=0.1),
    ]
    for (got,), want in zip(paths, wants, strict=True):
        got = flat(got, 1)
        assert np.abs(got[-1] - flat(params)).max() > 1e-3
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
    # SAM's second gradient changes the path: plain SGD's differs.
    sgd = _paths([_alone(fo.sgd(0.02))], params, loss, steps=20)
    assert np.abs(flat(sgd[0][0], 1) - flat(paths[0][0], 1)).max() > 1e-4


def _optax_sam(optimizer, rho):
    """optax's SAM in its opaque mode: one normalised ascent step of size ρ, then
    `optimizer` fed the gradient there."""
    adversary = optax.chain(optax.contrib.normalize(), optax.sgd(rho))
    return optax.contrib.sam(optimizer, adversary, sync_period=2, opaque_mode=True)


def _optax_run(opt):
    """optax's SAM gets `grad_fn(params, i)`, not the loss."""
    extra = lambda value, g, loss: dict(grad_fn=lambda p, i: jax.grad(loss)(p))
    return _alone(opt, optax.apply_updates, extra)


def test_sam_matches_optaxs_opaque_sam_in_float64():
    params, loss = _problem()
    runs = [
        _alone(fo.sam(fo.radam(0.05))),
        _optax_run(_optax_sam(optax.radam(0.05), 0.05)),
        _alone(fo.sam(fo.adabelief(0.05), rho=0.2)),
        _optax_run(_optax_sam(optax.adabelief(0.05), 0.2)),
    ]
    paths = _paths(runs, params, loss)
    _assert_pairs_agree(paths, params)


def test_sam_takes_grad_fn_and_asks_for_the_loss():
    params, loss = _problem()
    opt = fo.sam(fo.sgd(0.1))
    state = opt.init(params)
    g = jax.grad(loss)(params)
    by_value, _ = opt.update(g, state, params, value_fn=loss)
    by_grad, _ = opt.update(g, state, params, grad_fn=jax.grad(loss))
    np.testing.assert_array_equal(flat(by_value), flat(by_grad))
    with pytest.raises(TypeError, match=r"sam: update needs the extra arg `value_fn`"):
        opt.update(g, state, params)
    # A zero gradient makes no perturbation, not a NaN.
    zero = jax.tree.map(jnp.zeros_like, g)
    for adaptive in (False, True):
        step, _ = fo.sam(fo.sgd(0.1), adaptive=adaptive).update(zero, state, params, value_fn=loss)
        np.testing.assert_allclose(flat(step), -0.1 * flat(g), rtol=1e-12)


# In `fit`: the train state holds the plain params; the slow or eval params come from the
# optimizer state.

MODEL = nn.serial(nn.dense(8), nn.tanh, nn.dense(3))


def _blobs(n=64):
    rng = np.random.default_rng(5)
    y = rng.integers(0, 3, n)
    x = 2.0 * np.eye(3)[y] + rng.normal(size=(n, 3))
    return jnp.asarray(x), jnp.asarray(y, jnp.int32)


@pytest.mark.parametrize(
    ("opt", "evaluate"),
    [
        (fo.lookahead(fo.adam(0.05), 4, 0.5), lambda s, p: fo.lookahead_slow_params(s)),
        (fo.sam(fo.adam(0.05)), lambda s, p: p),
    ],
    ids=["lookahead", "sam"],
)
def test_fit_trains_with_the_params_a_plain_pytree(opt, evaluate):
    x, y = _blobs()
    result = train.fit(
        MODEL,
        opt,
        (x, y),
        loss_fn=losses.softmax_cross_entropy,
        epochs=3,
        batch_size=16,
        key=jax.random.key(2),
        progress=False,
    )
    assert result.history["loss"][-1] < 0.8 * result.history["loss"][0]
    params = result.state.params
    assert isinstance(params, dict)
    held = evaluate(result.state.opt_state, params)
    assert jax.tree.structure(held) == jax.tree.structure(params)
    logits, _ = MODEL.apply(held, result.state.model_state, x)
    assert float(losses.softmax_cross_entropy(logits, y)) < result.history["loss"][0]
