"""The same seed gives bit-identical params: twice in one process and in a fresh process.

The model draws on every source of randomness `fit` has: initialisation, the shuffle of each
epoch and dropout masks, and carries batch-norm state.
"""

import hashlib
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np

import funcnet as fn
from funcnet import nn

ROOT = Path(__file__).resolve().parents[2]


def params_digest(seed: int = 0) -> str:
    """SHA-256 of the trained params' bytes after two epochs of `fit`."""
    split = fn.data.digits()
    model = nn.serial(nn.dense(32), nn.batch_norm(), nn.relu, nn.dropout(0.3), nn.dense(10))
    result = fn.train.fit(
        model,
        fn.optim.adam(1e-2),
        (split.x_train[:300], split.y_train[:300]),
        loss_fn=fn.losses.softmax_cross_entropy,
        epochs=2,
        batch_size=32,
        key=jax.random.key(seed),
        progress=False,
    )
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves((result.state.params, result.state.model_state)):
        digest.update(np.asarray(leaf).tobytes())
    return digest.hexdigest()


def test_same_seed_same_bits_in_process_and_across_processes():
    first, second = params_digest(), params_digest()
    assert first == second
    assert params_digest(seed=1) != first  # the digest does depend on the seed
    command = [
        sys.executable,
        "-c",
        "from tests.train.test_train_determinism import params_digest; print(params_digest())",
    ]
    # One fresh process: it shares nothing with this one (compiled code, key state, x64
    # toggles of earlier tests), so a second would check nothing more.
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.strip().splitlines()[-1] == first
