"""Reading a model's jaxpr: where each param leaf is used, and evaluating it with taps.

Shared by the structured NTK (`ntk.py`), the Kronecker factors (`kronecker.py`) and the
per-example quantities (`quantities.py`); `CALLS` by the per-example gradients too. A "tap"
is a product (`dot_general`, `conv_general_dilated`) of the jaxpr whose operands are recorded
and to whose output a perturbation `eps` may be added, so that the gradient with respect to
`eps` is the signal back-propagated to that output. An equation is named by its path: its
index in the jaxpr, preceded by the indices of the nested `jit`s it sits in.
"""

from __future__ import annotations

from jax.extend import core

_JIT_NAMES = ("jit", "pjit")
# Higher-order primitives whose inner jaxpr takes the equation's operands one to one.
CALLS = frozenset(
    {
        *_JIT_NAMES,
        "closed_call",
        "core_call",
        "checkpoint",
        "remat",
        "custom_jvp_call",
        "custom_vjp_call",
    }
)

Use = tuple[tuple[int, ...], core.JaxprEqn, int]


def is_jit(eqn: core.JaxprEqn) -> bool:
    """Whether `eqn` calls a nested jitted function, which the walks below step into."""
    return eqn.primitive.name in _JIT_NAMES and isinstance(
        eqn.params.get("jaxpr"), core.ClosedJaxpr
    )


def is_plain_dot(eqn: core.JaxprEqn) -> bool:
    """A `dot_general` without batch axes: a matrix product of its two operands."""
    return eqn.primitive.name == "dot_general" and not any(eqn.params["dimension_numbers"][1])


def _is_reshape_of(eqn: core.JaxprEqn, alias: dict) -> bool:
    """Whether `eqn` reshapes a variable of `alias` in row-major order."""
    v = eqn.invars[0] if eqn.invars else None
    return (
        eqn.primitive.name == "reshape"
        and eqn.params.get("dimensions") is None
        and isinstance(v, core.Var)
        and v in alias
    )


def find_uses(
    jaxpr: core.Jaxpr, alias: dict, path: tuple, uses: dict, *, through_reshapes: bool = False
) -> None:
    """Every use of each variable of `alias` (variable -> label), through nested `jit`s:
    `uses[label]` gets (path, eqn, operand position) for each equation that reads it, and None
    for each time it is an output of the jaxpr.

    With `through_reshapes`, a `reshape` of such a variable is not a use: its output takes the
    label, and the equations reading the reshaped array are the uses (a kernel ``(in, h·d)``
    read by its product as ``(in, h, d)``). The operand's shape is then not the leaf's."""
    alias = dict(alias)
    for k, eqn in enumerate(jaxpr.eqns):
        if is_jit(eqn):
            inner = eqn.params["jaxpr"].jaxpr
            sub = {
                w: alias[v]
                for v, w in zip(eqn.invars, inner.invars, strict=True)
                if isinstance(v, core.Var) and v in alias
            }
            find_uses(inner, sub, (*path, k), uses, through_reshapes=through_reshapes)
            continue
        if through_reshapes and _is_reshape_of(eqn, alias):
            alias[eqn.outvars[0]] = alias[eqn.invars[0]]
            continue
        for position, v in enumerate(eqn.invars):
            if isinstance(v, core.Var) and v in alias:
                uses[alias[v]].append(((*path, k), eqn, position))
    for v in jaxpr.outvars:
        if isinstance(v, core.Var) and v in alias:
            uses[alias[v]].append(None)


def find_jaxpr(jaxpr: core.Jaxpr, path: tuple) -> core.Jaxpr:
    """The (nested) jaxpr that holds the equation at `path`."""
    for k in path[:-1]:
        jaxpr = jaxpr.eqns[k].params["jaxpr"].jaxpr
    return jaxpr


def find_eqn(jaxpr: core.Jaxpr, path: tuple) -> core.JaxprEqn:
    """The equation at `path`."""
    return find_jaxpr(jaxpr, path).eqns[path[-1]]


def eval_tapped(
    jaxpr: core.Jaxpr,
    consts: list,
    args: list,
    path: tuple,
    eps: dict,
    taps: dict,
    primitives: tuple[str, ...] = ("dot_general",),
) -> list:
    """Evaluates `jaxpr`, inlining nested `jit`s; at each equation of `primitives` records its
    operands in `taps[path]` and adds `eps[path]`, where given, to its output."""
    env: dict = {}
    read = lambda v: v.val if isinstance(v, core.Literal) else env[v]
    env.update(zip(jaxpr.constvars, consts, strict=True))
    env.update(zip(jaxpr.invars, args, strict=True))
    for k, eqn in enumerate(jaxpr.eqns):
        here = (*path, k)
        invals = [read(v) for v in eqn.invars]
        if is_jit(eqn):
            inner = eqn.params["jaxpr"]
            outs = eval_tapped(inner.jaxpr, inner.consts, invals, here, eps, taps, primitives)
        else:
            bound = eqn.primitive.get_bind_params(eqn.params)
            subfuns, bind_params = bound if isinstance(bound, tuple) else ((), bound)
            outs = eqn.primitive.bind(*subfuns, *invals, **bind_params)
            if not eqn.primitive.multiple_results:
                outs = [outs]
            if eqn.primitive.name in primitives:
                taps[here] = invals
                if here in eps:
                    outs = [outs[0] + eps[here]]
        env.update(zip(eqn.outvars, outs, strict=True))
    return [read(v) for v in jaxpr.outvars]
