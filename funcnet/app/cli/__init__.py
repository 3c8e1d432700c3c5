"""The `funcnet` command: train, evaluate and inspect small models from the shell.

    funcnet train --dataset digits --out runs/digits        # checkpoint, metrics, curves
    funcnet train --data mine.csv --label y --out runs/mine  # a file of your own
    funcnet eval --checkpoint runs/digits/checkpoint.npz    # loss and accuracy on a split
    funcnet predict --checkpoint runs/mine/checkpoint.npz --data new.csv --out preds.csv
    funcnet plot runs/a runs/b --out compare.png             # curves of several runs
    funcnet hessian --checkpoint runs/digits/checkpoint.npz --top-k 5
    funcnet landscape --checkpoint runs/digits/checkpoint.npz --dims 2 --out landscape.png
    funcnet bench --smoke                                    # the benchmark suite

One module per subcommand (`train`, `eval`, `predict`, `plot`, `hessian`, `landscape`,
`bench`), each with ``add_parser`` and ``run``; `common` holds what they share. A checkpoint
written by ``train`` stores the whole configuration (data, architecture, optimizer) in its
metadata, so the other commands rebuild the model from the file alone.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from jax.errors import JaxRuntimeError

from funcnet.app.cli import bench, eval, hessian, landscape, plot, predict, train
from funcnet.app.cli.common import CommandError, Data, Parser, load_data

__all__ = ["CommandError", "Data", "build_parser", "load_data", "main"]

COMMANDS = (train, eval, predict, plot, hessian, landscape, bench)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `funcnet` command and its subcommands."""
    parser = Parser(
        prog="funcnet",
        description="Train, evaluate and inspect funcnet models.",
        epilog="Run `funcnet COMMAND --help` for a command's options.",
    )
    commands = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=Parser
    )
    for command in COMMANDS:
        command.add_parser(commands)
    parser.subcommands = commands.choices
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the `funcnet` command with `argv` (default: the process's); returns the exit code.

    Ctrl-C outside a training loop (which stops after its epoch, see `funcnet train`) ends the
    command with one line and status 130, not a traceback.
    """
    try:
        return _run_command(argv)
    except KeyboardInterrupt:
        print("\nfuncnet: interrupted (Ctrl-C)", file=sys.stderr)
        return 130


def _run_command(argv: Sequence[str] | None) -> int:
    from funcnet.checkpoint import CheckpointError
    from funcnet.train import NonFiniteLossError

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"] and argv[1:2] not in (["-h"], ["--help"]):
        return bench.run_suite(argv[1:])  # every argument after `bench` belongs to the suite
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # refused by the subcommand's parser, so that its name starts the line
        parser.subcommands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        return args.run(args)
    except (CommandError, CheckpointError) as err:
        print(f"funcnet {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except (NonFiniteLossError, OSError, MemoryError) as err:
        # A run that diverged, a disk that filled up, a file that vanished: not the input.
        print(f"funcnet {args.command}: {_one_line(err) or type(err).__name__}", file=sys.stderr)
        return 1
    except JaxRuntimeError as err:
        if "RESOURCE_EXHAUSTED" not in str(err):
            raise
        print(f"funcnet {args.command}: out of memory: {_one_line(err)}", file=sys.stderr)
        return 1


def _one_line(err: BaseException) -> str:
    """An error's message on one line: a multi-line one (a checkpoint's list of differing
    leaves) joined with semicolons."""
    return "; ".join(line.strip() for line in str(err).splitlines() if line.strip())
