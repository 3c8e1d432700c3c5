"""fit's progress: a tqdm bar on a terminal, plain lines in a log (no carriage returns)."""

import io
import re

import jax
import jax.numpy as jnp
import pytest

from funcnet import losses, nn, optim, train
from funcnet.train import loop

EPOCHS = 4


def run_fit(progress=True):
    x = jax.random.normal(jax.random.key(0), (16, 3))
    y = jnp.arange(16) % 2
    model = nn.serial(nn.dense(2))
    return train.fit(
        model,
        optim.sgd(0.1),
        (x, y),
        loss_fn=losses.softmax_cross_entropy,
        epochs=EPOCHS,
        batch_size=8,
        key=jax.random.key(1),
        eval_data=(x, y),
        progress=progress,
    )


class Terminal(io.StringIO):
    def isatty(self):
        return True


LINE = re.compile(
    r"^fit: epoch (\d+)/4, loss [\d.e+-]+, acc [\d.]+, val_loss [\d.e+-]+, val_acc [\d.]+ "
    r"\(\d+\.\d s\)$"
)


def test_a_log_gets_one_plain_line_per_epoch(monkeypatch, capsys):
    monkeypatch.setattr(loop, "LINE_INTERVAL_S", 0.0)
    run_fit()
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    assert [int(LINE.match(line).group(1)) for line in lines] == list(range(1, EPOCHS + 1))


def test_a_log_gets_at_most_a_line_a_second_and_always_the_last(monkeypatch, capsys):
    monkeypatch.setattr(loop, "LINE_INTERVAL_S", 3600.0)
    run_fit()
    lines = capsys.readouterr().err.splitlines()
    assert [int(LINE.match(line).group(1)) for line in lines] == [1, EPOCHS]


def test_a_terminal_gets_the_redrawn_bar(monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    run_fit()
    shown = terminal.getvalue()
    assert "\r" in shown and f"{EPOCHS}/{EPOCHS}" in shown
    assert not any(LINE.match(line) for line in shown.splitlines())


@pytest.mark.parametrize("stream", [io.StringIO, Terminal])
def test_no_progress_prints_nothing(monkeypatch, stream):
    shown = stream()
    monkeypatch.setattr("sys.stderr", shown)
    run_fit(progress=False)
    assert shown.getvalue() == ""
