"""Multi-process start-up and failure: a peer that never comes, a coordinator port in use, a
peer lost mid-run, and `funcnet.launch` stopping the others when one process fails.

Every case runs real local processes (`funcnet train` on moons, or a few lines of JAX) with
timeouts of seconds, so each test costs a JAX start-up or two (about 3 s of CPU each).
"""

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import pytest

from funcnet import checkpoint
from funcnet.launch import ENV_ADDRESS, ENV_COUNT, ENV_ID, free_port, launch

# Releases before 0.10, whose own abort of a survivor can come before funcnet's line.
OLD_JAX = tuple(int(n) for n in jax.__version__.split(".")[:2]) < (0, 10)

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
TRAIN = [sys.executable, "-m", "funcnet.app.cli", "train", "--dataset", "moons", "--quiet"]
TRAIN += ["--epochs", "1", "--hidden", "8", "--distributed"]


def run_process(args, index, address, tmp_path, timeout=120):
    env = {**ENV, ENV_ADDRESS: address, ENV_COUNT: "2", ENV_ID: str(index)}
    started = time.monotonic()
    done = subprocess.run(
        [*args, "--out", str(tmp_path / "run")],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return done, time.monotonic() - started


@pytest.mark.parametrize("index", [0, 1])
def test_a_peer_that_never_comes_is_waited_for_then_given_up(index, tmp_path):
    address = f"127.0.0.1:{free_port()}"
    done, seconds = run_process([*TRAIN, "--init-timeout", "3"], index, address, tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1, done.stderr
    waiting = (
        f"funcnet: waiting for 1 of 2 processes at {address}"
        if index == 0
        else f"funcnet: process 1 of 2 waiting for the coordinator at {address}"
    )
    assert lines[0].startswith(waiting), done.stderr
    assert lines[-1].startswith("funcnet: gave up after 3 s: "), done.stderr
    missing = "1 of 2 processes never joined" if index == 0 else "found no complete run"
    assert missing in lines[-1] and address in lines[-1] and "--init-timeout" in lines[-1]
    assert seconds < 60  # 3 s of waiting plus a JAX start-up, not JAX's own 5 minutes
    assert not (tmp_path / "run").exists()


def test_the_timeout_comes_from_the_environment(tmp_path):
    address = f"127.0.0.1:{free_port()}"
    env = {**ENV, "FUNCNET_INIT_TIMEOUT": "2", ENV_ADDRESS: address, ENV_COUNT: "2", ENV_ID: "0"}
    script = "from funcnet.launch import initialize; initialize()"
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("funcnet: gave up after 2 s: ")


def test_a_coordinator_port_in_use_is_one_line(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        address = f"127.0.0.1:{holder.getsockname()[1]}"
        done, _ = run_process(TRAIN, 0, address, tmp_path)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"funcnet train: error: port {address.split(':')[1]} of the coordinator address "
        f"{address} is already in use on this machine; choose another port "
        f"({ENV_ADDRESS}) or stop what holds it"
    ]


@pytest.mark.parametrize(
    "value, message",
    [
        ("abc", "FUNCNET_INIT_TIMEOUT='abc' is not a number"),
        ("0", "must be positive seconds up to 1e6, got 0"),
        ("-1", "got -1"),
        ("inf", "got inf"),
    ],
)
def test_a_bad_timeout_is_refused(value, message, monkeypatch):
    from funcnet.launch import LaunchError, initialize

    monkeypatch.setenv("FUNCNET_INIT_TIMEOUT", value)
    with pytest.raises(LaunchError, match=message):
        initialize("127.0.0.1:1", 2, 0)


# `funcnet train`, where every process says "ready" after its first epoch and process PAUSE
# pauses there (so the test can kill it there).
PAUSING_TRAIN = textwrap.dedent(
    """
    import os, sys, time
    from funcnet import train
    from funcnet.app.cli import main

    fit = train.fit

    def pausing_fit(*args, on_epoch_end, **kwargs):
        def hook(epoch, state, metrics):
            on_epoch_end(epoch, state, metrics)
            if epoch == 0:
                print("ready", flush=True)
            if os.environ["FUNCNET_PROCESS_ID"] == os.environ["PAUSE"]:
                time.sleep(60)

        return fit(*args, on_epoch_end=hook, **kwargs)

    train.fit = pausing_fit
    sys.exit(main(sys.argv[1:]))
    """
)


def kill_one_after_an_epoch(tmp_path, lost):
    """Two processes of `funcnet train --distributed`; process `lost` is killed after the
    first epoch's checkpoint. The survivor's exit status, seconds to exit and stderr."""
    address = f"127.0.0.1:{free_port()}"
    out = tmp_path / "run"
    args = ["train", "--dataset", "moons", "--quiet", "--epochs", "3", "--hidden", "8"]
    args += ["--distributed", "--out", str(out)]
    env = {**ENV, ENV_ADDRESS: address, ENV_COUNT: "2", "PAUSE": str(lost)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", PAUSING_TRAIN, *args],
            env={**env, ENV_ID: str(index)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for index in range(2)
    ]
    survivor = procs[1 - lost]
    try:
        for p in procs:  # both past the first epoch's checkpoint
            assert "ready\n" in iter(p.stdout.readline, ""), p.stderr.read()
        procs[lost].kill()
        started = time.monotonic()
        _, err = survivor.communicate(timeout=60)
        seconds = time.monotonic() - started
    finally:
        for p in procs:
            p.kill()
            p.communicate()
    return survivor.returncode, seconds, err, address, out


def test_a_survivor_names_the_lost_process_and_the_last_checkpoint(tmp_path):
    """Process 1 is killed after the first epoch; process 0 ends at once with a line naming
    it and the checkpoint written at that epoch's end, which `--resume` continues from."""
    code, seconds, err, address, out = kill_one_after_an_epoch(tmp_path, lost=1)
    lines = [line for line in err.splitlines() if line.startswith("funcnet:")]
    assert code == 1, err
    assert seconds < 30
    assert len(lines) == 1, err
    assert lines[0].startswith(
        f"funcnet: process 0 of 2 stops: lost process 1 of 2 at {address}; "
        f"last checkpoint {out / 'checkpoint.npz'} (epoch 1 of 3); continue with --resume ("
    )
    assert checkpoint.metadata(out / "checkpoint.npz")["progress"] == {"epoch": 1, "of": 3}


def test_a_survivor_of_the_coordinator_says_so_before_jax_aborts(tmp_path):
    """Process 0, JAX's coordinator, is killed after the first epoch. JAX would end process
    1 with a native abort (status 134) and pages of its log; process 1 ends first, with
    status 1 and one line naming process 0 and the last checkpoint."""
    code, seconds, err, address, out = kill_one_after_an_epoch(tmp_path, lost=0)
    lines = [line for line in err.splitlines() if line.startswith("funcnet:")]
    assert code == 1, err
    assert seconds < 30
    assert checkpoint.metadata(out / "checkpoint.npz")["progress"] == {"epoch": 1, "of": 3}
    if not lines and OLD_JAX:
        # JAX 0.8's coordination agent aborts a survivor the moment the coordinator's socket
        # closes, before funcnet's watch can speak; from JAX 0.10 the watch is first.
        assert "JAX distributed service detected fatal errors" in err, err
        return
    # Whichever notices first: the watch on the coordinator's port, or the collective of
    # the next epoch failing (`_peer_failure_hook`).
    assert len(lines) == 1, err
    assert lines[0].startswith("funcnet: process 1 of 2 stops: lost process 0 of 2"), err
    assert (
        f"{address}; last checkpoint {out / 'checkpoint.npz'} (epoch 1 of 3); "
        "continue with --resume" in lines[0]
    ), err


CHILD = textwrap.dedent(
    """
    import os, signal, sys, time
    index = int(os.environ["FUNCNET_PROCESS_ID"])
    if sys.argv[2] == "ignore":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    pid_file = os.path.join(sys.argv[1], f"pid_{index}")
    open(pid_file + ".tmp", "w").write(str(os.getpid()))
    os.rename(pid_file + ".tmp", pid_file)
    if index == 1:  # dies once the others run, with their SIGTERM handling set
        while not all(os.path.exists(os.path.join(sys.argv[1], f"pid_{i}")) for i in (0, 2)):
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(120)
    """
)


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("term", ["obey", "ignore"])
def test_the_launcher_names_the_failed_process_and_stops_the_others(term, tmp_path, capfd):
    started = time.monotonic()
    code = launch([sys.executable, "-c", CHILD, str(tmp_path), term], 3, grace_s=1)
    seconds = time.monotonic() - started
    lines = capfd.readouterr().err.splitlines()
    assert code == 128 + signal.SIGKILL
    assert lines[0] == "funcnet.launch: process 1 was killed by SIGKILL; stopping the other 2"
    if term == "ignore":
        assert lines[1:] == [
            "funcnet.launch: process 0 still runs 1 s after SIGTERM; sending SIGKILL",
            "funcnet.launch: process 2 still runs 1 s after SIGTERM; sending SIGKILL",
        ]
    else:
        assert lines[1:] == []
    assert seconds < 30
    for index in (0, 2):
        assert not alive(int((tmp_path / f"pid_{index}").read_text()))


def test_the_launcher_reports_an_exit_status(capfd):
    script = "import os, sys, time\nif os.environ['FUNCNET_PROCESS_ID'] == '0': sys.exit(3)\n"
    script += "time.sleep(60)"
    assert launch([sys.executable, "-c", script], 2, grace_s=1) == 3
    assert capfd.readouterr().err.splitlines() == [
        "funcnet.launch: process 0 exited with status 3; stopping the other 1"
    ]
