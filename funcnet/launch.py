"""Multi-process start-up: `initialize` joins a JAX distributed run; ``python -m funcnet.launch``
starts one on this machine.

Each process of a run calls `initialize` before anything else touches JAX's backends. It reads
the coordinator's address, the number of processes and its own id from its arguments, or else
from the environment variables ``FUNCNET_COORDINATOR_ADDRESS``, ``FUNCNET_NUM_PROCESSES`` and
``FUNCNET_PROCESS_ID``. On CPU it selects the gloo collectives, so the same code runs on a
laptop as on a cluster of GPU machines.

To try it on one machine::

    python -m funcnet.launch -n 2 -- funcnet train --dataset digits --distributed --quiet

starts two processes talking over 127.0.0.1, each with those variables set, and waits for both.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence

import jax

ENV_ADDRESS = "FUNCNET_COORDINATOR_ADDRESS"
ENV_COUNT = "FUNCNET_NUM_PROCESSES"
ENV_ID = "FUNCNET_PROCESS_ID"


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    timeout_s: int = 120,
) -> None:
    """Joins a multi-process run through `jax.distributed.initialize`.

    Arguments left as None are read from the ``FUNCNET_*`` environment variables. The CPU
    collectives are set to gloo first, so that cross-process reductions work on CPUs too.
    """
    address = coordinator_address or os.environ.get(ENV_ADDRESS)
    count = num_processes if num_processes is not None else _env_int(ENV_COUNT)
    index = process_id if process_id is not None else _env_int(ENV_ID)
    if address is None or count is None or index is None:
        raise ValueError(
            "initialize: the coordinator address, number of processes and process id are "
            f"needed, as arguments or as {ENV_ADDRESS}, {ENV_COUNT} and {ENV_ID}; got "
            f"address={address!r}, num_processes={count!r}, process_id={index!r}"
        )
    if not 0 <= index < count:
        raise ValueError(f"initialize: process_id {index} is outside [0, {count})")
    # Only the CPU backend reads this; on accelerators their own collectives are used.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=address,
        num_processes=count,
        process_id=index,
        initialization_timeout=timeout_s,
    )


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return None if value is None else int(value)


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
) -> int:
    """Runs `command` as `num_processes` local processes of one distributed run.

    Every process gets the ``FUNCNET_*`` variables (coordinator on 127.0.0.1). If one fails,
    or `timeout_s` passes, the others are stopped. Returns the first non-zero exit code, or 0.
    """
    if num_processes < 1:
        raise ValueError(f"launch: num_processes must be at least 1, got {num_processes}")
    if not command:
        raise ValueError("launch: no command given")
    address = f"127.0.0.1:{port or free_port()}"
    procs = []
    for index in range(num_processes):
        child_env = {**os.environ, **(env or {})}
        child_env.update({ENV_ADDRESS: address, ENV_COUNT: str(num_processes), ENV_ID: str(index)})
        procs.append(subprocess.Popen(list(command), env=child_env, start_new_session=True))
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    try:
        while True:
            codes = [p.poll() for p in procs]
            failed = [c for c in codes if c not in (None, 0)]
            if failed:
                return failed[0]
            if all(c == 0 for c in codes):
                return 0
            if deadline is not None and time.monotonic() > deadline:
                print(f"launch: stopped after {timeout_s:.0f} s", file=sys.stderr)
                return 124
            time.sleep(0.1)
    finally:
        _stop(procs)


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m funcnet.launch",
        description="Start a multi-process JAX run on this machine (coordinator on 127.0.0.1).",
    )
    parser.add_argument("-n", "--num-processes", type=int, default=2)
    parser.add_argument("--port", type=int, default=None, help="coordinator port (default: free)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds before stopping all")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --")
    return launch(command, args.num_processes, port=args.port, timeout_s=args.timeout)


if __name__ == "__main__":
    sys.exit(main())
