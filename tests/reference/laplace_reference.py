"""Writes tests/data/laplace_torch_0.3.npz: laplace-torch's Laplace approximations of two small
float64 MLPs, the reference of tests/bayes/test_laplace.py.

Run with a side environment, not the project's (pytest does not collect this file):

    python3 -m venv /tmp/laplaceref
    /tmp/laplaceref/bin/pip install torch --index-url https://download.pytorch.org/whl/cpu
    /tmp/laplaceref/bin/pip install laplace-torch==0.3 numpy
    /tmp/laplaceref/bin/python tests/reference/laplace_reference.py

(recorded with laplace-torch 0.3, torch 2.14.1+cpu, backpack-for-pytorch 1.7.1,
curvlinops-for-pytorch 3.0.1, numpy 2.4.6, Python 3.11).

Models: a classifier 4 → 8 (tanh) → 3 on 40 points and a regressor 1 → 10 (tanh) → 1 on 30
points, weights drawn from a seeded NumPy generator. Weights are stored in funcnet's layout
(``dense_0/w`` of shape ``(in, out)``, ``y = x @ w + b``); laplace-torch's parameter vectors
are in PyTorch's order (per layer: ``weight`` of shape ``(out, in)`` row-major, then
``bias``), and the test permutes them. For every task × subset (all, last_layer) × structure
(full, diag, kron) × curvature (ggn, ef where a backend has it) the file holds, under the
prefix ``{task}/{subset}/{structure}/{curvature}/``:

- ``h``: the curvature sum `H` (the full matrix, or the diagonal; for kron the diagonal of
  the dense Kronecker blocks);
- ``lml``: the log marginal likelihood on the grid ``lml_prior`` × ``lml_sigma``;
- ``prior_opt``: the prior precision `optimize_prior_precision(method="marglik")` returns
  (Adam on log δ, lr 0.1, 100 steps, from 1);
- ``f_mu``, ``f_var``: the GLM predictive's mean and output covariance at ``x_test``,
  with the fit's prior precision and σ;
- classification: ``probit`` (GLM, probit link), ``glm_mc`` and ``nn_mc`` (10,000 samples,
  to be compared with a statistical tolerance); regression: ``nn_mean``, ``nn_var``.
"""

import importlib.metadata
import itertools
import sys
from pathlib import Path

import numpy as np
import torch
from laplace import Laplace
from laplace.curvature import BackPackEF, BackPackGGN, CurvlinopsEF, CurvlinopsGGN
from torch.utils.data import DataLoader, TensorDataset

torch.set_default_dtype(torch.float64)
torch.set_num_threads(1)
OUT = Path(__file__).resolve().parents[1] / "data" / "laplace_torch_0.3.npz"
PRIOR = 2.0  # the fit's prior precision
SIGMA = 0.5  # the regression fit's noise scale
LML_PRIOR = np.array([0.5, 2.0, 7.0])
LML_SIGMA = {"class": np.array([1.0]), "reg": np.array([0.3, 1.0])}
N_MC = 10_000


def mlp(rng, sizes):
    layers = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        lin = torch.nn.Linear(n_in, n_out)
        with torch.no_grad():
            lin.weight.copy_(torch.tensor(rng.normal(size=(n_out, n_in)) / np.sqrt(n_in)))
            lin.bias.copy_(torch.tensor(0.3 * rng.normal(size=n_out)))
        layers.append(lin)
        if i < len(sizes) - 2:
            layers.append(torch.nn.Tanh())
    return torch.nn.Sequential(*layers)


def tasks():
    rng = np.random.default_rng(31)
    x = rng.normal(size=(40, 4))
    model = mlp(rng, (4, 8, 3))
    with torch.no_grad():
        logits = model(torch.tensor(x)).numpy()
    y = np.argmax(logits + rng.gumbel(size=logits.shape), axis=1)
    yield "class", "classification", model, x, y, rng.normal(size=(12, 4))
    x = rng.uniform(-2, 2, size=(30, 1))
    y = np.sin(2 * x) + 0.3 * rng.normal(size=x.shape)
    model = mlp(rng, (1, 10, 1))
    yield "reg", "regression", model, x, y, np.linspace(-4, 4, 15)[:, None]


def funcnet_weights(model):
    out = {}
    for name, module in model.named_children():
        if isinstance(module, torch.nn.Linear):  # nn.serial names children by position
            out[f"dense_{name}/w"] = module.weight.detach().numpy().T.copy()
            out[f"dense_{name}/b"] = module.bias.detach().numpy().copy()
    return out


def backend_of(structure, curvature):
    if curvature == "ggn":
        return CurvlinopsGGN if structure == "kron" else BackPackGGN
    return CurvlinopsEF if structure == "kron" else BackPackEF


def main():
    store = {"lml_prior": LML_PRIOR, "prior": np.array(PRIOR), "sigma": np.array(SIGMA)}
    for task, likelihood, model, x, y, x_test in tasks():
        store[f"{task}/x"], store[f"{task}/x_test"] = x, x_test
        store[f"{task}/y"] = y
        store[f"{task}/lml_sigma"] = LML_SIGMA[task]
        for name, value in funcnet_weights(model).items():
            store[f"{task}/params/{name}"] = value
        target = torch.tensor(y) if task == "reg" else torch.tensor(y, dtype=torch.long)
        loader = DataLoader(TensorDataset(torch.tensor(x), target), batch_size=len(x))
        sigma = SIGMA if task == "reg" else 1.0
        for subset in ("all", "last_layer"):
            for structure in ("full", "diag", "kron"):
                for curvature in ("ggn", "ef"):
                    backend = backend_of(structure, curvature)
                    la = Laplace(
                        model,
                        likelihood,
                        subset_of_weights=subset,
                        hessian_structure=structure,
                        prior_precision=PRIOR,
                        sigma_noise=sigma,
                        backend=backend,
                    )
                    la.fit(loader)
                    key = f"{task}/{subset}/{structure}/{curvature}/"
                    record(store, key, la, task, structure, x_test)
                    print(key, "lml", store[key + "lml"].ravel()[:3], file=sys.stderr, flush=True)
    np.savez_compressed(OUT, **store)
    version = importlib.metadata.version("laplace-torch")
    print(OUT, OUT.stat().st_size, "bytes; laplace-torch", version, file=sys.stderr)


def record(store, key, la, task, structure, x_test):
    if structure == "kron":
        h = la.H
        store[key + "h"] = h.diag().detach().numpy()
        store[key + "logdet"] = np.array(la.log_det_posterior_precision.item())
    else:
        store[key + "h"] = la.H.detach().numpy()
    sigmas = store[f"{task}/lml_sigma"]
    lml = np.zeros((len(LML_PRIOR), len(sigmas)))
    for i, prior in enumerate(LML_PRIOR):
        for j, sigma in enumerate(sigmas):
            kwargs = {"sigma_noise": torch.tensor(sigma)} if task == "reg" else {}
            lml[i, j] = la.log_marginal_likelihood(torch.tensor(prior), **kwargs).item()
    store[key + "lml"] = lml
    la.prior_precision = PRIOR
    if task == "reg":
        la.sigma_noise = SIGMA
    xt = torch.tensor(x_test)
    f_mu, f_var = la._glm_predictive_distribution(xt)
    store[key + "f_mu"], store[key + "f_var"] = f_mu.numpy(), f_var.numpy()
    torch.manual_seed(0)
    if task == "class":
        store[key + "probit"] = la(xt, pred_type="glm", link_approx="probit").numpy()
        store[key + "glm_mc"] = la(xt, pred_type="glm", link_approx="mc", n_samples=N_MC).numpy()
        store[key + "nn_mc"] = la(xt, pred_type="nn", link_approx="mc", n_samples=N_MC).numpy()
    else:
        mean, var = la(xt, pred_type="nn", link_approx="mc", n_samples=N_MC)
        store[key + "nn_mean"], store[key + "nn_var"] = mean.numpy(), var.numpy()
    la.optimize_prior_precision(method="marglik", pred_type="glm")
    store[key + "prior_opt"] = la.prior_precision.detach().numpy()
    la.prior_precision = PRIOR


if __name__ == "__main__":
    main()
