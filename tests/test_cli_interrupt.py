"""`funcnet train` stopped by SIGINT, SIGTERM or SIGKILL, then resumed with `--resume`.

Each run is a subprocess that pauses after one chosen epoch (a hook around `train.fit`), so
the signal lands between that epoch and the next; the resumed run must end bit for bit where
the uninterrupted run ends.
"""

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from funcnet import checkpoint
from funcnet.app import cli

EPOCHS = 6
TRAIN = [
    "train",
    "--dataset",
    "moons",
    "--hidden",
    "12",
    "--batch-size",
    "64",
    "--lr",
    "0.02",
    "--epochs",
    str(EPOCHS),
    "--quiet",
]  # the default cosine schedule: the learning rate depends on the step reached

# `funcnet train`, pausing `PAUSE` seconds after epoch `WAIT_AT` (0-based) once it has
# printed "ready", so the test can signal it there.
PAUSING_TRAIN = textwrap.dedent(
    """
    import os, sys, time
    from funcnet import train
    from funcnet.app.cli import main

    wait_at, pause = int(os.environ["WAIT_AT"]), float(os.environ["PAUSE"])
    fit = train.fit

    def pausing_fit(*args, on_epoch_end, **kwargs):
        def hook(epoch, state, metrics):
            on_epoch_end(epoch, state, metrics)
            if epoch == wait_at:
                print("ready", flush=True)
                time.sleep(pause)

        return fit(*args, on_epoch_end=hook, **kwargs)

    train.fit = pausing_fit
    sys.exit(main(sys.argv[1:]))
    """
)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A compilation cache the runs share: the same executables, so the same bits."""
    return tmp_path_factory.mktemp("jax-cache")


def start(out, wait_at, cache, *, resume=False, pause=1.0):
    """Starts the pausing run into `out` and waits until it pauses after epoch `wait_at`."""
    args = [*TRAIN, "--out", str(out)]
    if resume:
        args += ["--resume", str(out / "checkpoint.npz")]
    env = {
        **os.environ,
        "WAIT_AT": str(wait_at),
        "PAUSE": str(pause),
        "JAX_PLATFORMS": "cpu",
        "JAX_COMPILATION_CACHE_DIR": str(cache),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }
    child = subprocess.Popen(
        [sys.executable, "-c", PAUSING_TRAIN, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    line = child.stdout.readline()
    if line != "ready\n":
        child.kill()
        _, err = child.communicate()
        pytest.fail(f"the run did not reach epoch {wait_at}: {line!r}\n{err}")
    return child


def last_state(out):
    return checkpoint.load(out / "checkpoint.npz")["last"]


def assert_same_training(got, want):
    """Params, model state and optimizer state equal bit for bit, leaf by leaf."""
    for part in ("params", "model_state", "opt_state", "step"):
        a, b = getattr(got, part), getattr(want, part)
        leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
        assert len(leaves_a) == len(leaves_b), part
        for x, y in zip(leaves_a, leaves_b, strict=True):
            assert np.array_equal(np.asarray(x), np.asarray(y)), part


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("whole")
    assert cli.main([*TRAIN, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def uninterrupted(whole_run):
    return last_state(whole_run)


def interrupt(out, signum, cache):
    """Signals a fresh run after a random epoch; checks the status, message and files."""
    wait_at = random.Random(int(signum)).randrange(EPOCHS - 1)
    child = start(out, wait_at, cache)
    child.send_signal(signum)
    stdout, stderr = child.communicate(timeout=120)
    assert child.returncode == 128 + signum, stderr
    path = out / "checkpoint.npz"
    assert stderr.strip().splitlines()[-1] == (
        f"funcnet: interrupted at epoch {wait_at + 1} of {EPOCHS}; checkpoint {path}; "
        "continue with --resume"
    )
    assert "stopping after the current epoch" in stderr
    assert "test accuracy" not in stdout
    meta = checkpoint.metadata(path)
    assert meta["interrupted"] == {"epoch": wait_at + 1, "signal": signal.Signals(signum).name}
    assert len((out / "metrics.jsonl").read_text().splitlines()) == wait_at + 1
    return wait_at + 1


def resume_and_compare(out, uninterrupted):
    assert cli.main([*TRAIN, "--out", str(out), "--resume", str(out / "checkpoint.npz")]) == 0
    assert_same_training(last_state(out), uninterrupted)


def test_sigterm_stops_after_the_epoch_and_resume_repeats_the_whole_run(
    tmp_path, uninterrupted, cache
):
    interrupt(tmp_path, signal.SIGTERM, cache)
    resume_and_compare(tmp_path, uninterrupted)
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == EPOCHS


def test_ctrl_c_then_sigkill_then_ctrl_c_twice_and_resume_repeats_the_whole_run(
    tmp_path, uninterrupted, cache
):
    done = interrupt(tmp_path, signal.SIGINT, cache)
    path = tmp_path / "checkpoint.npz"

    # SIGKILL in the middle of the resumed run, after its first epoch: the checkpoint written
    # at that epoch's end is whole, and the next run continues from it.
    child = start(tmp_path, done, cache, resume=True, pause=30)
    child.kill()
    child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL
    done += 1
    assert checkpoint.metadata(path)["progress"] == {"epoch": done, "of": EPOCHS}
    assert int(last_state(tmp_path).step) == done * int(uninterrupted.step) // EPOCHS
    before = path.read_bytes()

    # Ctrl-C twice: the second one ends the run at once, though it is busy for 30 s more; the
    # checkpoint is the one written before the signals.
    child = start(tmp_path, done, cache, resume=True, pause=30)
    after = path.read_bytes()
    assert after != before
    started = time.monotonic()
    child.send_signal(signal.SIGINT)
    assert "stopping after the current epoch" in child.stderr.readline() + child.stderr.readline()
    child.send_signal(signal.SIGINT)
    _, stderr = child.communicate(timeout=60)
    assert child.returncode == 130
    assert time.monotonic() - started < 20
    assert stderr.strip().splitlines()[-1] == "funcnet: Ctrl-C again: stopped at once"
    assert path.read_bytes() == after

    resume_and_compare(tmp_path, uninterrupted)
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "metrics.jsonl").open()]
    assert epochs == list(range(EPOCHS))


def test_ctrl_c_before_training_ends_with_one_line(monkeypatch, capsys):
    from funcnet.app.cli import train as train_command

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_command, "run", interrupted)
    assert cli.main(TRAIN) == 130
    assert capsys.readouterr().err.strip() == "funcnet: interrupted (Ctrl-C)"


def test_resume_drops_the_metrics_lines_after_the_checkpoint(tmp_path, whole_run):
    """A run killed between its checkpoint and its metrics line (or in the middle of a line)
    leaves lines the resumed run would repeat; they go."""
    (tmp_path / "checkpoint.npz").write_bytes((whole_run / "checkpoint.npz").read_bytes())
    lines = [json.dumps({"epoch": e, "loss": 1.0}) + "\n" for e in range(EPOCHS + 2)]
    (tmp_path / "metrics.jsonl").write_text("".join(lines) + '{"epoch": 8, "lo')
    resumed = [*TRAIN, "--out", str(tmp_path), "--resume", str(tmp_path / "checkpoint.npz")]
    assert cli.main(resumed) == 0
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "metrics.jsonl").open()]
    assert epochs == list(range(EPOCHS))
