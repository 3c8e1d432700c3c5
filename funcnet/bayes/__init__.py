"""Bayesian deep learning on trained networks: Laplace approximations of the weight posterior.

`laplace` fits N(θ̂, P⁻¹) around trained weights (all of them, the last layer, or any subset;
a full, diagonal or Kronecker-factored precision from the Gauss-Newton matrix or the
empirical Fisher), with laplace-torch's conventions. `log_marginal_likelihood` is the
evidence, `optimize_prior_precision` tunes the prior by it, `predictive` gives the
linearised (GLM: probit or Monte Carlo) and the sampled-weights predictive, `sample` draws
weights, `functional_moments` the GLM's output mean and covariance.
"""

from funcnet.bayes.laplace import (
    KronBlock,
    LaplacePosterior,
    RegressionPredictive,
    functional_moments,
    laplace,
    log_marginal_likelihood,
    optimize_prior_precision,
    posterior_precision,
    predictive,
    sample,
)

__all__ = [
    "KronBlock",
    "LaplacePosterior",
    "RegressionPredictive",
    "functional_moments",
    "laplace",
    "log_marginal_likelihood",
    "optimize_prior_precision",
    "posterior_precision",
    "predictive",
    "sample",
]
