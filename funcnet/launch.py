"""Multi-process start-up: `initialize` joins a JAX distributed run; ``python -m funcnet.launch``
starts one on this machine.

Each process of a run calls `initialize` before anything else touches JAX's backends. It reads
the coordinator's address, the number of processes and its own id from its arguments, or else
from the environment variables ``FUNCNET_COORDINATOR_ADDRESS``, ``FUNCNET_NUM_PROCESSES`` and
``FUNCNET_PROCESS_ID``. On CPU it selects the gloo collectives, so the same code runs on a
laptop as on a cluster of GPU machines.

Failures end a process with one line on stderr rather than a hang or a native stack trace: a
peer that never joins (after ``timeout`` seconds, ``FUNCNET_INIT_TIMEOUT``), a coordinator port
already in use, and a peer lost in the middle of the run.

To try it on one machine::

    python -m funcnet.launch -n 2 -- funcnet train --dataset digits --distributed --quiet

starts two processes talking over 127.0.0.1, each with those variables set, and waits for both.
If one fails, the launcher names it and stops the others.
"""

from __future__ import annotations

import argparse
import atexit
import errno
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

import jax

ENV_ADDRESS = "FUNCNET_COORDINATOR_ADDRESS"
ENV_COUNT = "FUNCNET_NUM_PROCESSES"
ENV_ID = "FUNCNET_PROCESS_ID"
ENV_TIMEOUT = "FUNCNET_INIT_TIMEOUT"

INIT_TIMEOUT_S = 300.0
# How long a silent peer counts as alive. JAX's default (100 s) would leave the survivors of a
# crash waiting; heartbeats come from a thread of their own, so a busy CPU does not delay them.
HEARTBEAT_TIMEOUT_S = 15
_WAIT_NOTICE_S = 2.0  # a quick start says nothing; a slower one says what it waits for


class LaunchError(RuntimeError):
    """A multi-process run could not start: bad settings or a coordinator port in use."""


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    timeout: float | None = None,
) -> None:
    """Joins a multi-process run through `jax.distributed.initialize`.

    Arguments left as None are read from the ``FUNCNET_*`` environment variables; `timeout`
    (seconds to wait for every process to join) from ``FUNCNET_INIT_TIMEOUT``, else 300. The
    CPU collectives are set to gloo first, so that cross-process reductions work on CPUs too.

    While it waits for longer than two seconds it says so on stderr. If the run has not formed
    after `timeout` seconds, it prints one line naming what is missing and ends the process
    with status 1 (JAX cannot be asked to give up and return). Afterwards, a peer process lost
    mid-run ends this one too, with one line naming the lost process (see `on_peer_failure`).

    Raises:
      LaunchError: missing or inconsistent settings, or (on process 0) the coordinator's port
        is already in use on this machine.
    """
    address = coordinator_address or os.environ.get(ENV_ADDRESS)
    count = num_processes if num_processes is not None else _env_number(ENV_COUNT, int)
    index = process_id if process_id is not None else _env_number(ENV_ID, int)
    if timeout is None:
        timeout = _env_number(ENV_TIMEOUT, float)
    if timeout is None:
        timeout = INIT_TIMEOUT_S
    if address is None or count is None or index is None:
        raise LaunchError(
            "initialize: the coordinator address, number of processes and process id are "
            f"needed, as arguments or as {ENV_ADDRESS}, {ENV_COUNT} and {ENV_ID}; got "
            f"address={address!r}, num_processes={count!r}, process_id={index!r}"
        )
    if not 0 <= index < count:
        raise LaunchError(f"initialize: process_id {index} is outside [0, {count})")
    if not 0 < timeout <= 1e6:  # NaN and inf fail too
        raise LaunchError(
            f"initialize: the timeout must be positive seconds up to 1e6, got {timeout:g}"
        )
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise LaunchError(f"initialize: the coordinator address must be HOST:PORT, got {address!r}")
    if index == 0:
        _check_port_free(int(port), address)
    # Only the CPU backend reads this; on accelerators their own collectives are used.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    joined = threading.Event()
    watch = threading.Thread(
        target=_watch_join,
        args=(joined, timeout, address, count, index),
        name="funcnet-join-watch",
        daemon=True,
    )
    watch.start()
    try:
        jax.distributed.initialize(
            coordinator_address=address,
            num_processes=count,
            process_id=index,
            # JAX aborts the process with a native stack trace at its own deadline; the watch
            # above gives up first, with one line.
            initialization_timeout=int(timeout) + 60,
            heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_S,
        )
    finally:
        joined.set()
    _peer.update(index=index, count=count, address=address)
    sys.excepthook = _peer_failure_hook(sys.excepthook)
    if index != 0:
        threading.Thread(
            target=_watch_coordinator,
            args=(host, int(port)),
            name="funcnet-coordinator-watch",
            daemon=True,
        ).start()


def _env_number(name: str, kind: type) -> int | float | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return kind(value)
    except ValueError:
        raise LaunchError(f"{name}={value!r} is not a number") from None


def _check_port_free(port: int, address: str) -> None:
    """Binds the coordinator's port (as JAX will, on every interface) to find a holder first."""
    for family, host in ((socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")):
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError:  # no IPv6 on this machine
            continue
        with sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError as err:
                if err.errno != errno.EADDRINUSE:
                    continue
                raise LaunchError(
                    f"port {port} of the coordinator address {address} is already in use on "
                    f"this machine; choose another port ({ENV_ADDRESS}) or stop what holds it"
                ) from None
            return


def _watch_join(
    joined: threading.Event, timeout: float, address: str, count: int, index: int
) -> None:
    """Says what the process waits for, and ends it at `timeout` if the run has not formed."""
    if joined.wait(min(_WAIT_NOTICE_S, timeout)):
        return
    if index == 0:
        waiting = f"waiting for {count - 1} of {count} processes at {address}"
    else:
        waiting = f"process {index} of {count} waiting for the coordinator at {address}"
    print(f"funcnet: {waiting} (gives up after {timeout:g} s)", file=sys.stderr, flush=True)
    if joined.wait(max(timeout - _WAIT_NOTICE_S, 0.0)):
        return
    if index == 0:
        missing = (
            f"{count - 1} of {count} processes never joined {address}"
            if count == 2
            else f"not all of the other {count - 1} processes joined {address}"
        )
    else:
        missing = (
            f"process {index} of {count} found no complete run at {address} (process 0, the "
            "coordinator, or another process never came)"
        )
    _say_and_exit(
        f"funcnet: gave up after {timeout:g} s: {missing}; start every process with the same "
        f"{ENV_ADDRESS} and {ENV_COUNT}, or wait longer (--init-timeout, {ENV_TIMEOUT})"
    )


# Held by the first of the watches and the excepthook that ends the process, for good.
_stopping = threading.Lock()


def _say_and_exit(line: str) -> None:
    """Prints `line` and ends this process with status 1. Two detectors can see one loss at
    once (the watch on the coordinator's port and a collective's error): the second waits
    here until the first's exit, so one line is printed."""
    _stopping.acquire()
    print(line, file=sys.stderr, flush=True)
    os._exit(1)


_peer: dict = {"note": None}


def on_peer_failure(note: str | None) -> None:
    """Sets what the line printed when a peer process is lost adds at its end, e.g.
    ``"last checkpoint runs/x/checkpoint.npz"`` (None: nothing). Call it as checkpoints are
    written."""
    _peer["note"] = note


# What JAX's errors say when a collective or the coordination service lost a peer.
_PEER_ERROR = re.compile(r"gloo .*failed|coordination service|heartbeat|unhealthy", re.I)


def _watch_coordinator(host: str, port: int) -> None:
    """Holds a TCP connection to the coordinator's port; when it closes and the port no
    longer takes connections, process 0 is gone: says so in one line and ends this process.

    JAX ends a process that loses the coordinator with a native abort (status 134) and
    pages of its own log, from a thread of its client. That client takes a callback for the
    loss, but cannot call a Python one (its status argument has no Python type). The same
    closed socket wakes this thread, whose line goes out while JAX prints its stack trace.
    An idle connection the server closes is reopened; nothing is said once this process
    has left the run (`jax.distributed.shutdown`) or exits, when a finished process 0 may
    close the port first.
    """
    while not _exiting.is_set():
        try:
            sock = socket.create_connection((host, port), timeout=5.0)
        except OSError:
            break
        with sock:
            sock.settimeout(None)
            try:
                while sock.recv(4096):
                    pass
            except OSError:
                pass
    if _exiting.is_set() or not _joined():
        return
    note = _peer["note"]
    _say_and_exit(
        f"funcnet: process {_peer['index']} of {_peer['count']} stops: lost process 0 of "
        f"{_peer['count']}, the coordinator at {host}:{port}" + (f"; {note}" if note else "")
    )


_exiting = threading.Event()
atexit.register(_exiting.set)


def _joined() -> bool:
    """Whether this process is still in the run (`jax.distributed.shutdown` not called)."""
    from jax._src import distributed

    return getattr(distributed.global_state, "client", None) is not None


def _lost_process(text: str) -> str:
    """Names the lost process from a JAX error's text, as well as the text allows."""
    count, index = _peer["count"], _peer["index"]
    found = re.search(r"unhealthy[^:]*:\s*([\d,\s]+)", text)
    if found:
        ids = [int(i) for i in re.findall(r"\d+", found.group(1))]
        if ids:
            return ", ".join(f"process {i}" for i in ids) + f" of {count}"
    if count == 2:
        return f"process {1 - index} of 2"
    return f"another of the {count} processes"


def _peer_failure_hook(previous):
    """An excepthook that turns a collective's failure into one line and an immediate exit:
    JAX's own shutdown at exit would wait minutes for the dead peer."""

    def hook(kind, value, traceback):
        text = str(value)
        # Not only RuntimeError: some JAX helpers re-raise a collective's failure as ValueError.
        if not (isinstance(value, Exception) and _PEER_ERROR.search(text)):
            return previous(kind, value, traceback)
        note = _peer["note"]
        _say_and_exit(
            f"funcnet: process {_peer['index']} of {_peer['count']} stops: lost "
            f"{_lost_process(text)} at {_peer['address']}"
            + (f"; {note}" if note else "")
            + f" ({text.splitlines()[0][:160]})"
        )

    return hook


def is_leader() -> bool:
    """Whether this is process 0 of the run (True in a single-process run): the one that
    writes checkpoints (`funcnet.checkpoint.save` writes nothing elsewhere) and prints
    reports. Every process holds the same replicated state, so one copy is written."""
    return jax.process_index() == 0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(
    command: Sequence[str],
    num_processes: int,
    *,
    port: int | None = None,
    timeout_s: float | None = None,
    env: dict[str, str] | None = None,
    grace_s: float = 10.0,
) -> int:
    """Runs `command` as `num_processes` local processes of one distributed run.

    Every process gets the ``FUNCNET_*`` variables (coordinator on 127.0.0.1). If one fails,
    it is named on stderr with its exit status or signal, and the others are stopped: SIGTERM,
    then SIGKILL after `grace_s` seconds. So they are when `timeout_s` passes (status 124).

    Returns:
      0 when every process succeeded; else the failed process's exit status, or 128 + the
      signal number of the signal that killed it (as a shell reports it).
    """
    if num_processes < 1:
        raise ValueError(f"launch: num_processes must be at least 1, got {num_processes}")
    if not command:
        raise ValueError("launch: no command given")
    address = f"127.0.0.1:{port or free_port()}"
    procs: list[subprocess.Popen] = []
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    try:
        for index in range(num_processes):
            child_env = {**os.environ, **(env or {})}
            child_env.update(
                {ENV_ADDRESS: address, ENV_COUNT: str(num_processes), ENV_ID: str(index)}
            )
            procs.append(subprocess.Popen(list(command), env=child_env, start_new_session=True))
        while True:
            codes = [p.poll() for p in procs]
            failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                # Of failures seen at once, a death by signal is likelier the cause: the
                # others' collectives fail after it and they exit with a status.
                index, code = min(failed, key=lambda failure: failure[1] >= 0)
                running = sum(c is None for c in codes)
                stopping = f"; stopping the other {running}" if running else ""
                _say(f"process {index} {_how_ended(code)}{stopping}")
                return code if code > 0 else 128 - code
            if all(c == 0 for c in codes):
                return 0
            if deadline is not None and time.monotonic() > deadline:
                running = sum(c is None for c in codes)
                _say(f"stopping {running} running processes after {timeout_s:g} s (--timeout)")
                return 124
            time.sleep(0.1)
    finally:
        _stop(procs, grace_s)


def _say(message: str) -> None:
    print(f"funcnet.launch: {message}", file=sys.stderr, flush=True)


def _how_ended(code: int) -> str:
    if code >= 0:
        return f"exited with status {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    return f"was killed by {name}"


def _stop(procs: list[subprocess.Popen], grace_s: float) -> None:
    """SIGTERM to every running process group, then SIGKILL to those still there after
    `grace_s` seconds."""
    for p in procs:
        if p.poll() is None:
            _signal_group(p, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for index, p in enumerate(procs):
        try:
            p.wait(timeout=max(deadline - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:
            _say(f"process {index} still runs {grace_s:g} s after SIGTERM; sending SIGKILL")
            _signal_group(p, signal.SIGKILL)
            p.wait()


def _signal_group(p: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(p.pid, signum)
    except ProcessLookupError:  # ended in the meantime
        pass


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m funcnet.launch",
        description="Start a multi-process JAX run on this machine (coordinator on 127.0.0.1). "
        "If a process fails, it is named and the others are stopped.",
    )
    parser.add_argument("-n", "--num-processes", type=int, default=2)
    parser.add_argument("--port", type=int, default=None, help="coordinator port (default: free)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds before stopping all")
    parser.add_argument(
        "--grace", type=float, default=10.0, help="seconds from SIGTERM to SIGKILL when stopping"
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --")
    if args.num_processes < 1:
        parser.error(f"-n must be at least 1, got {args.num_processes}")
    # The children run in sessions of their own, out of reach of the terminal's and the
    # scheduler's signals: a SIGTERM here stops them through `launch`'s cleanup.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        return launch(
            command,
            args.num_processes,
            port=args.port,
            timeout_s=args.timeout,
            grace_s=args.grace,
        )
    except KeyboardInterrupt:
        _say("interrupted; stopped every process")
        return 130


if __name__ == "__main__":
    sys.exit(main())
