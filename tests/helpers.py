"""Helpers shared by test modules."""

import contextlib
import importlib.util
import os
import pathlib

import jax

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_module(relative: str):
    """Imports a file of the repository, such as ``examples/xor.py``, as a module."""
    path = ROOT / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def host_devices(count: int) -> str:
    """`XLA_FLAGS` for a child process with `count` forced host devices that keeps this
    process's other XLA flags (the suite's compile flags, see conftest.py), so that what the
    child computes is what this process computes, to the bit."""
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
    return " ".join([*flags, f"--xla_force_host_platform_device_count={count}"])


@contextlib.contextmanager
def backend_compiles():
    """The list, filled as the block runs, of the seconds each XLA compilation inside it took
    (JAX's ``backend_compile_duration`` events)."""
    compiles = []

    def listener(event, seconds, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(seconds)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield compiles
    finally:
        # jax 0.8.0, the floor, cannot unregister; the listener then only fills a dead list.
        getattr(jax.monitoring, "unregister_event_duration_listener", lambda f: None)(listener)


def nested_jaxprs(params):
    """The jaxprs among an equation's params (scan's body, cond's branches, pjit's jaxpr, ...),
    as `jax.extend.core.jaxprs_in_params` finds them (JAX 0.10 and later only)."""
    for value in params.values():
        for item in value if isinstance(value, tuple | list) else (value,):
            if hasattr(item, "eqns"):
                yield item
            elif hasattr(item, "jaxpr") and hasattr(item.jaxpr, "eqns"):
                yield item.jaxpr


def check_jit_vmap_grad(model, params, state, x, rtol=1e-5, atol=1e-6):
    """`model.apply` in evaluation agrees under `jax.jit` and under `jax.vmap` over single
    examples, and its gradient has the params' structure and finite leaves. Returns the
    eager output."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    y, _ = model.apply(params, state, x)
    y_jit, _ = jax.jit(model.apply)(params, state, x)
    np.testing.assert_allclose(y_jit, y, rtol=rtol, atol=atol)
    per_example = jax.vmap(lambda xi: model.apply(params, state, xi[None])[0][0])(x)
    np.testing.assert_allclose(per_example, y, rtol=rtol, atol=atol)
    grads = jax.grad(lambda p: jnp.sum(model.apply(p, state, x)[0] ** 2))(params)
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    return y
