"""Gradient transformations, named optimizers and learning-rate schedules.

The protocol is optax's, so either library's pieces mix with the other's::

    opt = funcnet.optim.adam(learning_rate=1e-3)
    opt_state = opt.init(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    params = funcnet.optim.apply_updates(params, updates)

Named optimizers follow the `torch.optim` class of the same name; each docstring states its
update rule. `learning_rate` is a number or a schedule `step -> rate`.
"""

from funcnet.optim._alias import (
    adadelta,
    adagrad,
    adam,
    adamax,
    adamw,
    lion,
    momentum,
    nadam,
    nesterov,
    rmsprop,
    sgd,
)
from funcnet.optim._base import (
    EmptyState,
    GradientTransformation,
    OptState,
    Params,
    ScalarOrSchedule,
    Schedule,
    TransformInitFn,
    TransformUpdateFn,
    Updates,
    apply_updates,
    bias_correction,
    chain,
    global_norm,
    identity,
    update_moment,
)
from funcnet.optim._schedules import (
    constant_schedule,
    cosine_decay_schedule,
    exponential_decay,
    join_schedules,
    piecewise_constant_schedule,
    polynomial_schedule,
    warmup_cosine_decay_schedule,
)
from funcnet.optim._transforms import (
    ApplyIfFiniteState,
    MaskedNode,
    MaskedState,
    ScaleByAdadeltaState,
    ScaleByAdagradState,
    ScaleByAdamaxState,
    ScaleByAdamState,
    ScaleByLearningRateState,
    ScaleByLionState,
    ScaleByNadamState,
    ScaleByRmsState,
    TraceState,
    add_decayed_weights,
    apply_if_finite,
    clip,
    clip_by_global_norm,
    masked,
    scale,
    scale_by_adadelta,
    scale_by_adagrad,
    scale_by_adam,
    scale_by_adamax,
    scale_by_learning_rate,
    scale_by_lion,
    scale_by_nadam,
    scale_by_rms,
    trace,
)

__all__ = [  # noqa: RUF022 -- grouped by concept, sorted within each group
    # The protocol and its combinators.
    "EmptyState",
    "GradientTransformation",
    "OptState",
    "Params",
    "ScalarOrSchedule",
    "Schedule",
    "TransformInitFn",
    "TransformUpdateFn",
    "Updates",
    "apply_updates",
    "chain",
    "identity",
    # Tree helpers the rules share.
    "bias_correction",
    "global_norm",
    "update_moment",
    # Building blocks, with their states.
    "add_decayed_weights",
    "apply_if_finite",
    "clip",
    "clip_by_global_norm",
    "masked",
    "scale",
    "scale_by_adadelta",
    "scale_by_adagrad",
    "scale_by_adam",
    "scale_by_adamax",
    "scale_by_learning_rate",
    "scale_by_lion",
    "scale_by_nadam",
    "scale_by_rms",
    "trace",
    "ApplyIfFiniteState",
    "MaskedNode",
    "MaskedState",
    "ScaleByAdadeltaState",
    "ScaleByAdagradState",
    "ScaleByAdamState",
    "ScaleByAdamaxState",
    "ScaleByLearningRateState",
    "ScaleByLionState",
    "ScaleByNadamState",
    "ScaleByRmsState",
    "TraceState",
    # Named optimizers.
    "adadelta",
    "adagrad",
    "adam",
    "adamax",
    "adamw",
    "lion",
    "momentum",
    "nadam",
    "nesterov",
    "rmsprop",
    "sgd",
    # Schedules `step -> rate`.
    "constant_schedule",
    "cosine_decay_schedule",
    "exponential_decay",
    "join_schedules",
    "piecewise_constant_schedule",
    "polynomial_schedule",
    "warmup_cosine_decay_schedule",
]
