"""Writes the BackPACK reference fixture, ``tests/data/backpack_1.7.1.npz``, from BackPACK 1.7.1.

BackPACK is a PyTorch library, so this script runs only in a side environment of its own and
is never imported by the suite (its name is not ``test_*.py``).
``tests/diff/test_diff_quantities.py`` reads the file it writes with numpy alone. To regenerate::

    python3 -m venv /tmp/backpackref
    /tmp/backpackref/bin/pip install torch --index-url https://download.pytorch.org/whl/cpu
    /tmp/backpackref/bin/pip install backpack-for-pytorch==1.7.1 numpy
    /tmp/backpackref/bin/python tests/reference/backpack_reference.py tests/data/backpack_1.7.1.npz

The environment it was written with (``pip freeze``)::

    backpack-for-pytorch==1.7.1  einops==0.8.2  filelock==4.0.8  fsspec==2026.9.0
    Jinja2==3.1.6  MarkupSafe==3.0.3  mpmath==1.3.0  networkx==3.6.1  numpy==2.4.6
    packaging==26.4  pillow==13.0.0  sympy==1.14.0  torch==2.14.1  torchvision==0.29.1
    triton==3.8.0  typing_extensions==4.16.0  unfoldNd==0.2.3  (and the nvidia-* CUDA
    wheels torch 2.14.1 pulls in: backpack-for-pytorch's install replaced the CPU torch
    2.13.0 of the first line; the script runs on the CPU)

Three problems, in float64 with fixed weights, batch 5:

- ``mlp``: Linear 6→5, ReLU, Linear 5→4, Sigmoid, Linear 4→3, ``CrossEntropyLoss()``;
- ``cnn``: Conv2d 2→3 (k3, padding 1), ReLU, Conv2d 3→4 (k3, stride 2), ReLU, Flatten,
  Linear 36→3 on 7×7 inputs, ``CrossEntropyLoss()``;
- ``mse``: the ``mlp`` model with ``MSELoss()`` (mean over all B·3 entries, no ½).

For each: BatchGrad, BatchL2Grad, Variance, SumGradSquared, DiagGGNExact, DiagHessian, KFLR
in one backward pass; then DiagGGNMC and KFAC (one sample) each in a pass of its own after
``torch.manual_seed``. The targets those draw are drawn again here after the same seed, with
BackPACK's own distribution (``Categorical(softmax(f))`` or ``Normal(f, √½)``, ``sample([1])``
as its ``_compute_sampled_grads_manual`` does), and stored, so the suite can feed the same
draws to funcnet: classes for cross-entropy, ε = (ŷ − f)/√½ for MSE.

Everything is stored in funcnet's layout and with the names ``nn.serial`` gives: a dense
kernel ``w`` is ``(in, out)`` (PyTorch's weight transposed), a conv kernel HWIO (from OIHW),
inputs NHWC, and the Linear after the CNN's Flatten has its rows reordered from PyTorch's
(C, H, W) flattening to funcnet's (H, W, C). Keys are ``<problem>/<what>/<layer>/<w|b>``;
per-example quantities keep their leading batch axis. KFAC and KFLR factors are stored as
BackPACK returns them, per layer: ``…/kflr/<layer>/G`` (out × out, from the square root of
the mean loss's Hessian, so with its 1/B; for a conv layer the square root is summed over the
output positions before the outer product, BackPACK's Gauss-Newton block of the bias) and
``…/kflr/<layer>/A`` (in × in, (1/B) Σ x xᵀ; for a conv layer over the unfolded input
patches in PyTorch's (C, kh, kw) order, summed over output positions), the bias having G
alone.
"""

import sys

import numpy as np
import torch
from backpack import backpack, extend
from backpack.extensions import (
    KFAC,
    KFLR,
    BatchGrad,
    BatchL2Grad,
    DiagGGNExact,
    DiagGGNMC,
    DiagHessian,
    SumGradSquared,
    Variance,
)
from torch import nn
from torch.distributions import Categorical, Normal

B = 5
SEEDS = {"diag_ggn_mc": 11, "kfac": 12}


def mlp():
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), nn.Sigmoid(), nn.Linear(4, 3))


def cnn():
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(3, 4, 3, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(36, 3),
    )


def to_funcnet(layer: nn.Module, name: str, value: np.ndarray, lead: int) -> np.ndarray:
    """A weight- or bias-shaped array (with `lead` leading axes) in funcnet's layout."""
    head = tuple(range(lead))
    if name == "bias":
        return value
    if isinstance(layer, nn.Conv2d):  # (..., O, I, kh, kw) -> (..., kh, kw, I, O)
        return np.transpose(value, (*head, lead + 2, lead + 3, lead + 1, lead))
    if getattr(layer, "after_flatten", None):  # rows (C, H, W) -> (H, W, C)
        c, h, w = layer.after_flatten
        value = value.reshape(*value.shape[:lead], -1, c, h, w)
        value = np.transpose(value, (*head, lead + 2, lead + 3, lead + 1, lead))
        return value.reshape(*value.shape[:lead], h * w * c, -1)
    return np.swapaxes(value, -1, -2)


def layer_names(model: nn.Sequential) -> dict[int, str]:
    kinds = {nn.Linear: "dense", nn.Conv2d: "conv"}
    return {i: f"{kinds[type(m)]}_{i}" for i, m in enumerate(model) if type(m) in kinds}


def draws(outputs: torch.Tensor, loss_kind: str, seed: int) -> np.ndarray:
    """The targets BackPACK draws after `torch.manual_seed(seed)`, standardised."""
    torch.manual_seed(seed)
    f = outputs.detach()
    if loss_kind == "ce":
        return Categorical(torch.softmax(f, dim=1)).sample(torch.Size([1])).numpy()
    y = Normal(f, torch.tensor(0.5**0.5)).sample(torch.Size([1]))
    return ((y - f) / 0.5**0.5).numpy()


def problem(prefix: str, model: nn.Sequential, x: torch.Tensor, loss_kind: str) -> dict:
    out: dict[str, np.ndarray] = {}
    torch.manual_seed(1)
    if loss_kind == "ce":
        y = torch.randint(0, 3, (B,))
        lossfunc = nn.CrossEntropyLoss()
    else:
        y = torch.randn(B, 3, dtype=torch.float64)
        lossfunc = nn.MSELoss()
    model, lossfunc = extend(model), extend(lossfunc)
    names = layer_names(model)
    out[f"{prefix}/x"] = (x.permute(0, 2, 3, 1) if x.ndim == 4 else x).numpy()
    out[f"{prefix}/y"] = y.numpy()

    def store(what: str, attr: str, lead: int) -> None:
        for i, name in names.items():
            layer = model[i]
            for pname, key in (("weight", "w"), ("bias", "b")):
                value = getattr(getattr(layer, pname), attr).detach().numpy()
                out[f"{prefix}/{what}/{name}/{key}"] = to_funcnet(layer, pname, value, lead)

    def backward(*extensions) -> torch.Tensor:
        model.zero_grad()
        outputs = model(x)
        loss = lossfunc(outputs, y)
        with backpack(*extensions):
            loss.backward()
        return outputs, loss

    for i, name in names.items():
        for pname, key in (("weight", "w"), ("bias", "b")):
            value = getattr(model[i], pname).detach().numpy()
            out[f"{prefix}/params/{name}/{key}"] = to_funcnet(model[i], pname, value, 0)

    first = (BatchGrad(), BatchL2Grad(), Variance(), SumGradSquared())
    outputs, loss = backward(*first, DiagGGNExact(), DiagHessian(), KFLR())
    out[f"{prefix}/outputs"] = outputs.detach().numpy()
    out[f"{prefix}/loss"] = loss.detach().numpy()
    store("grad", "grad", 0)
    store("batch_grad", "grad_batch", 1)
    store("sum_grad_squared", "sum_grad_squared", 0)
    store("variance", "variance", 0)
    store("diag_ggn", "diag_ggn_exact", 0)
    store("diag_hessian", "diag_h", 0)
    for i, name in names.items():
        out[f"{prefix}/batch_l2/{name}/w"] = model[i].weight.batch_l2.detach().numpy()
        out[f"{prefix}/batch_l2/{name}/b"] = model[i].bias.batch_l2.detach().numpy()

    def kron(what: str, attr: str) -> None:
        for i, name in names.items():
            g, a = getattr(model[i].weight, attr)
            (g_bias,) = getattr(model[i].bias, attr)
            out[f"{prefix}/{what}/{name}/G"] = g.detach().numpy()
            out[f"{prefix}/{what}/{name}/A"] = a.detach().numpy()
            assert torch.allclose(g, g_bias)

    kron("kflr", "kflr")

    torch.manual_seed(SEEDS["diag_ggn_mc"])
    outputs, _ = backward(DiagGGNMC(mc_samples=1))
    store("diag_ggn_mc", "diag_ggn_mc", 0)
    out[f"{prefix}/diag_ggn_mc_draws"] = draws(outputs, loss_kind, SEEDS["diag_ggn_mc"])
    torch.manual_seed(SEEDS["kfac"])
    outputs, _ = backward(KFAC(mc_samples=1))
    kron("kfac", "kfac")
    out[f"{prefix}/kfac_draws"] = draws(outputs, loss_kind, SEEDS["kfac"])
    return out


def main(path: str) -> None:
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    arrays: dict[str, np.ndarray] = {}
    model = mlp()
    x = torch.randn(B, 6)
    arrays |= problem("mlp", model, x, "ce")
    arrays |= problem("mse", model, x, "mse")
    torch.manual_seed(2)
    model = cnn()
    model[5].after_flatten = (4, 3, 3)
    arrays |= problem("cnn", model, torch.randn(B, 2, 7, 7), "ce")
    arrays["meta/versions"] = np.array(
        f"torch {torch.__version__}, backpack-for-pytorch 1.7.1, numpy {np.__version__}"
    )
    np.savez_compressed(path, **arrays)
    print(f"wrote {len(arrays)} arrays to {path}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/data/backpack_1.7.1.npz")
