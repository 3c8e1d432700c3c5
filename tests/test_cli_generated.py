"""Generated command lines: thousands of argument lists over every subcommand and flag of
`funcnet`, drawn from a fixed seed with valid, borderline and nonsense values, run in-process.

Each must end with status 0, 1 or 2 (130 for Ctrl-C), an error as one line on stderr
(``funcnet CMD: error: ...`` for status 2, ``funcnet CMD: ...`` for 1), and never a
traceback. Valid lists run for real, so their number is bounded per subcommand and they are
made tiny (moons, a width of 4, `--epochs 0`); every other list holds at least one value its
flag must refuse.
"""

import contextlib
import csv
import io
import random
import re
import shutil
import signal
import time
import traceback
import warnings
from collections import Counter
from typing import NamedTuple

import numpy as np
import pytest

from funcnet.app import cli

SEED = 0
CASES = 2100
# Lists without a refused value, per subcommand: they run, so each costs a compilation.
# A valid `hessian` compiles three Lanczos loops (about 12 s): test_cli.py runs one.
RUNS = {"train": 5, "eval": 3, "predict": 3, "plot": 4, "hessian": 0, "landscape": 1}
SHARE = {
    "train": 36,
    "eval": 8,
    "predict": 10,
    "plot": 10,
    "hessian": 12,
    "landscape": 16,
    "bench": 3,
    "": 5,
}

# Refused by every integer flag of the command, whatever its range.
BAD_INTS = ["x", "", "1.5", "nan", "1e3", "0x10", "99999999999999999999", "2147483648", "--"]
BAD_POSITIVE = [*BAD_INTS, "0", "-1", "-0"]
BAD_FLOATS = ["x", "", "nan", "inf", "-inf", "1e309", "--", "1,5"]
BAD_FRACTIONS = [*BAD_FLOATS, "1", "-0.1", "1.0000001", "2"]
BAD_SEEDS = ["x", "", "1.5", "nan", "0x10", "99999999999999999999", "-1", "4294967296", "--"]
ODD_INTS = ["١", "1_0", " 2", "+3"]  # what Python's int() takes too: valid


class Flag(NamedTuple):
    valid: list
    borderline: list
    refused: list  # values this flag must refuse; None for an option that takes no value


def flags(world):
    """Every subcommand's flags with their values; paths point into `world`."""
    w = {name: str(path) for name, path in world.items()}
    fresh = "{fresh}"  # replaced by a folder no case has used
    checkpoint = [w["run"] + "/checkpoint.npz"]
    bad_checkpoints = [
        w["run"],
        w["afile"],
        w["adir"],
        w["garbage.npz"],
        w["missing"],
        "",
        w["run"] + "/checkpoint.npz/x",
        w["data.csv"],
    ]
    bad_outs = [w["afile"], w["afile"] + "/sub", "", "/dev/null", w["afile"] + "/a/b"]
    figure_outs = [fresh + "/f.png", fresh + "/f.svg", fresh + "/sub/f.pdf"]
    bad_figures = [
        w["adir"],
        w["afile"] + "/x.png",
        fresh + "/x.txt",
        fresh + "/noext",
        fresh + "/x.pgf",
        "",
        fresh + "/x.",
    ]
    switch = Flag([True], [], ["=yes", "=1"])
    return {
        "train": {
            "--dataset": Flag(["moons", "xor"], ["spirals"], ["mnist", "", "Moons", "digit"]),
            "--data": Flag(
                [w["data.csv"], w["x3d.npz"]],
                [w["regress.csv"], w["onecol.npy"]],
                [
                    w["afile"],
                    w["adir"],
                    w["missing"],
                    w["garbage.npz"],
                    "",
                    w["empty.csv"],
                    w["nan.csv"],
                    w["onelabel.csv"],
                    w["data.csv"] + "," + w["data.csv"],
                ],
            ),
            "--label": Flag(["species"], [], ["nope", "", "a,b"]),
            "--model": Flag(["mlp"], [], ["rnn", "", "MLP"]),
            "--hidden": Flag(
                ["4", "3,2"],
                ["1", "4,", ",4", "١"],
                [*BAD_POSITIVE, "-4", "4;4", ",", "1000000000", "100000,100000,100000"],
            ),
            "--channels": Flag(["2", "2,2"], ["1"], ["0", "x", "", "-2"]),
            "--activation": Flag(["relu", "tanh"], ["gelu", "sine"], ["Relu", "", "softmaxx"]),
            "--dropout": Flag(["0", "0.5"], ["0.999999", "-0"], BAD_FRACTIONS),
            "--batch-norm": switch,
            "--optimizer": Flag(["adam", "sgd"], ["lion", "adadelta", "nadam"], ["Adam", "", "x"]),
            "--lr": Flag(["0.01", "1e-3"], ["1e-30", "1e30"], [*BAD_FLOATS, "0", "-1", "-0"]),
            "--schedule": Flag(["constant", "cosine"], ["warmup-cosine"], ["linear", ""]),
            "--weight-decay": Flag(["0.01"], ["0", "1e30"], [*BAD_FLOATS, "-1"]),
            "--momentum": Flag(["0.9"], ["0", "5"], [*BAD_FLOATS, "-0.5"]),
            "--clip-norm": Flag(["1"], ["1e-30", "1e30"], [*BAD_FLOATS, "0", "-1"]),
            "--skip-nonfinite": switch,
            "--precision": Flag(["float32"], ["bfloat16", "float16"], ["float64", "fp16", ""]),
            "--accumulate": Flag(["1", "2"], ["7", "64"], BAD_POSITIVE),
            "--ema": Flag(["0.9"], ["0", "0.999999"], BAD_FRACTIONS),
            "--epochs": Flag(["0", "1"], ["-0", "٠", "2147483647"], [*BAD_INTS, "-1"]),
            "--batch-size": Flag(["32", "64"], ["1000000", "3", *ODD_INTS], BAD_POSITIVE),
            "--patience": Flag(["1"], ["2147483647"], BAD_POSITIVE),
            "--val-fraction": Flag(["0.1", "0"], ["0.999", "0.5"], BAD_FRACTIONS),
            "--members": Flag(["1", "2"], ["3"], [*BAD_POSITIVE, "2147483647"]),
            "--seed": Flag(["0", "7"], ["4294967295"], BAD_SEEDS),
            "--data-seed": Flag(["0", "3"], ["4294967295"], BAD_SEEDS),
            "--resume": Flag(checkpoint, [w["csvrun"] + "/checkpoint.npz"], bad_checkpoints),
            "--checkpoint-every": Flag(["0", "1"], ["2147483647"], [*BAD_INTS, "-1"]),
            "--out": Flag([fresh], [w["held"], fresh + "/a/b"], bad_outs),
            "--overwrite": switch,
            "--quiet": switch,
            "--devices": Flag(["1"], ["2"], BAD_POSITIVE),
            "--distributed": Flag([], [], [None]),  # no coordinator here: always refused
            "--fsdp": switch,
            "--tensor-parallel": Flag(["1"], ["2"], BAD_POSITIVE),
            "--init-timeout": Flag(["5"], ["1e-9"], [*BAD_FLOATS, "0", "-1"]),
        },
        "eval": {
            "--checkpoint": Flag(checkpoint, [w["csvrun"] + "/checkpoint.npz"], bad_checkpoints),
            "--split": Flag(["test", "train"], ["val"], ["valid", "", "TEST"]),
            "--json": switch,
        },
        "predict": {
            "--checkpoint": Flag(
                [w["csvrun"] + "/checkpoint.npz"], [], [*bad_checkpoints, *checkpoint]
            ),
            "--data": Flag(
                [w["new.csv"]],
                [w["data.csv"]],
                [w["afile"], w["adir"], w["missing"], "", w["few.csv"], w["garbage.npz"]],
            ),
            "--out": Flag(
                [fresh + "/p.csv"],
                ["/dev/null", fresh + "/p"],
                [w["adir"], w["afile"] + "/p.csv", "", w["adir"] + "/"],
            ),
        },
        "plot": {
            "RUN": Flag(
                [w["hist"]],
                [w["ensemble_hist"], w["jsonl_only"]],
                [w["adir"], w["afile"], w["missing"], w["badhist"], w["run"], "", w["notjson"]],
            ),
            "--out": Flag(figure_outs, [], bad_figures),
            "--title": Flag(["runs"], ["", "$", "$\\frac{", "a_b^c", "☃" * 50], []),
        },
        "hessian": {
            "--checkpoint": Flag(checkpoint, [w["csvrun"] + "/checkpoint.npz"], bad_checkpoints),
            "--top-k": Flag(["1", "2"], ["22"], [*BAD_POSITIVE, "27", "100000"]),
            "--iters": Flag(["3"], ["1"], BAD_POSITIVE),
            "--probes": Flag(["1"], [], BAD_POSITIVE),
            "--trace-samples": Flag(["2"], ["1"], BAD_POSITIVE),
            "--examples": Flag(["64"], ["1", "2147483647"], BAD_POSITIVE),
            "--member": Flag(["0"], ["5"], [*BAD_INTS, "-1"]),
            "--seed": Flag(["0"], ["4294967295"], BAD_SEEDS),
            "--out": Flag([fresh], [], bad_outs),
        },
        "landscape": {
            "--checkpoint": Flag(checkpoint, [w["csvrun"] + "/checkpoint.npz"], bad_checkpoints),
            "--dims": Flag(["1", "2"], [], ["3", "0", "x", "", "1.0"]),
            "--steps": Flag(["3"], ["2", "4"], [*BAD_POSITIVE, "1", "2147483647"]),
            "--span": Flag(["1"], ["1e-30", "1e300"], [*BAD_FLOATS, "0", "-1"]),
            "--split": Flag(["train", "test"], ["val"], ["valid", ""]),
            "--examples": Flag(["64"], ["1", "2147483647"], BAD_POSITIVE),
            "--batch-size": Flag(["64"], ["1", "2147483647"], BAD_POSITIVE),
            "--chunk": Flag(["4"], ["1", "2147483647"], BAD_POSITIVE),
            "--member": Flag(["0"], ["5"], [*BAD_INTS, "-1"]),
            "--seed": Flag(["0"], ["4294967295"], BAD_SEEDS),
            "--out": Flag(figure_outs, [], [*bad_figures, fresh + "/x.json"]),
        },
    }


REQUIRED = {"eval": ["--checkpoint"], "predict": ["--checkpoint", "--data"]}
REQUIRED |= {"hessian": ["--checkpoint"], "landscape": ["--checkpoint"], "plot": ["RUN"]}
# What keeps every list small: put before the values drawn, which win over them; and, for a
# list that runs, FORCED after them. `funcnet train` runs no epoch here (test_cli.py trains).
FORCED = {"train": ["--epochs", "0"]}
TINY = {
    "train": ["--dataset", "moons", "--hidden", "4"],
    "hessian": ["--iters", "3", "--trace-samples", "2", "--probes", "1", "--examples", "64"],
    "landscape": ["--steps", "3", "--examples", "64", "--chunk", "16"],
}


class Case(NamedTuple):
    command: str
    argv: list
    runs: bool  # holds no refused value, so it may run


def draw(rng, specs, command, index):
    """One argument list for `command`."""
    if command == "":
        argv = rng.choice(
            [[], ["--help"], ["nonsense"], ["--version"], ["-x"], ["TRAIN"], ["train2"], [""]]
        )
        return Case("", list(argv), False)
    if command == "bench":
        # A valid list would run the benchmark suite; only its refusals and --help here.
        tail = rng.choice([["--nonsense"], ["--repeats"], ["--", "--bogus"], ["--only"]])
        argv = ["bench", *rng.sample(["--smoke", "--quiet", "--check"], rng.randint(0, 2))]
        return Case("bench", [*argv, *tail], False)
    spec = specs[command]
    names = list(spec)
    chosen = rng.sample(names, rng.randint(0, min(7, len(names))))
    required = [name for name in REQUIRED.get(command, []) if rng.random() < 0.93]
    chosen += [name for name in required if name not in chosen]  # a list: the same each run
    argv, runs = [command], True
    fresh = f"fresh/{index}"
    rng.shuffle(chosen)
    for name in chosen:
        flag = spec[name]
        kind = rng.choices(["valid", "borderline", "refused"], [45, 25, 30])[0]
        pool = getattr(flag, kind) or flag.valid or flag.borderline
        if not pool or (kind == "refused" and not flag.refused):
            pool, kind = flag.valid or flag.borderline, "valid"
        if not pool:
            pool, kind = flag.refused, "refused"
        value = rng.choice(pool)
        runs &= kind != "refused"
        if value is True or value is None:
            argv.append(name)
        elif isinstance(value, str) and value.startswith("="):
            argv.append(name + value)
        elif name == "RUN":
            argv += [value.replace("{fresh}", fresh)] * rng.randint(1, 2)
        else:
            argv += [name, value.replace("{fresh}", fresh)]
    if rng.random() < 0.03:
        argv.insert(rng.randint(1, len(argv)), rng.choice(["--nonsense", "-q", "--out=", "-"]))
        runs = False
    if rng.random() < 0.01:
        argv.append(rng.choice(["--help", "-h"]))
        runs = False
    if "--distributed" in argv:
        runs = False
    return Case(command, argv, runs)


def spoil(rng, specs, case):
    """The case with one refused value appended, so that it is refused before any work."""
    spec = specs[case.command]
    names = [n for n in spec if spec[n].refused and spec[n].refused != [None] and n != "RUN"]
    name = rng.choice(names)
    value = rng.choice(spec[name].refused)
    extra = [name + value] if value.startswith("=") else [name, value]
    return case._replace(argv=[*case.argv, *extra], runs=False)


def generate(specs, seed=SEED, count=CASES):
    rng = random.Random(seed)
    left = dict(RUNS)
    cases = []
    commands = list(SHARE)
    for index in range(count):
        command = rng.choices(commands, [SHARE[c] for c in commands])[0]
        case = draw(rng, specs, command, index)
        if case.runs:
            if left.get(command, 0) > 0:
                left[command] -= 1
                case = case._replace(argv=[*case.argv, *FORCED.get(command, [])])
            else:
                case = spoil(rng, specs, case)
        if command in TINY:
            case = case._replace(argv=[command, *TINY[command], *case.argv[1:]])
        cases.append(case)
    return cases


class TookTooLong(BaseException):
    """Raised by the alarm of a list that runs longer than `LIMIT_S`."""


LIMIT_S = 60


def _alarm(signum, frame):
    raise TookTooLong(f"still running after {LIMIT_S} s")


def run(argv):
    """``(status, stdout, stderr, traceback or None)`` of `funcnet ARGV`, in-process; a
    warning is written to stderr, as Python's default handler does in a real process."""
    out, err = io.StringIO(), io.StringIO()
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, LIMIT_S)
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                code, raised = cli.main(list(argv)), None
            except SystemExit as exit_:
                code, raised = exit_.code, None
            except BaseException:
                code, raised = None, traceback.format_exc()
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, previous)
    shown = "".join(
        warnings.formatwarning(w.message, w.category, w.filename, w.lineno) for w in caught
    )
    return code, out.getvalue(), shown + err.getvalue(), raised


PROGRESS = re.compile(r"^fit( ×\d+)?: epoch \d+/\d+")


def problem(case, code, out, err, raised):
    """What is wrong with a case's outcome, or None."""
    if raised is not None:
        return f"raised:\n{raised}"
    if "Traceback" in err or "Traceback" in out:
        return f"printed a traceback:\n{err}"
    if code not in (0, 1, 2, 130):
        return f"exited {code!r}"
    if "Warning: " in err:
        return f"printed a warning:\n{err}"
    lines = [line for line in err.splitlines() if line.strip() and not PROGRESS.match(line)]
    if code == 0:
        return None
    who = f"funcnet {case.command}" if case.command else "funcnet"
    if case.command == "bench":  # the suite's own parser prints its usage first
        lines = lines[-1:]
    if len(lines) != 1:
        return f"exited {code} with {len(lines)} lines on stderr:\n{err}"
    start = f"{who}: error: " if code == 2 else f"{who}: "
    if not lines[0].startswith(start):
        return f"exited {code} with {lines[0]!r}, not {start!r}..."
    return None


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The files the generated lists name: two tiny runs, data files good and bad, a run
    history, a file, a folder and a path that does not exist."""
    root = tmp_path_factory.mktemp("world")
    rng = np.random.default_rng(0)
    files = {name: root / name for name in ("afile", "adir", "missing", "garbage.npz")}
    files["afile"].write_text("not a checkpoint\n")
    files["adir"].mkdir()
    files["garbage.npz"].write_bytes(rng.bytes(300))

    def table(name, header, rows):
        files[name] = root / name
        with open(files[name], "w", newline="") as stream:
            csv.writer(stream).writerows([header, *rows])

    x = rng.normal(size=(60, 3))
    species = np.where(x[:, 0] > 0, "setosa", "virginica")
    rows = [[*map(str, r), s] for r, s in zip(x, species, strict=True)]
    table("data.csv", ["a", "b", "c", "species"], rows)
    table("regress.csv", ["a", "b", "y"], [[str(r[0]), str(r[1]), f"{r[2]:.3f}"] for r in x])
    table("new.csv", ["c", "b", "a"], [list(map(str, r)) for r in x[:5]])
    table("few.csv", ["a"], [["1"]])
    table("nan.csv", ["a", "label"], [["nan", "0"], ["1", "1"]])
    table("onelabel.csv", ["a", "label"], [["1", "0"], ["2", "0"], ["3", "0"]])
    files["empty.csv"] = root / "empty.csv"
    files["empty.csv"].write_text("")
    files["x3d.npz"] = root / "x3d.npz"
    np.savez(files["x3d.npz"], x=rng.normal(size=(40, 3, 2)), y=rng.integers(0, 2, 40))
    files["onecol.npy"] = root / "onecol.npy"
    np.save(files["onecol.npy"], rng.normal(size=40))
    np.save(root / "onecol_y.npy", rng.integers(0, 3, 40))

    tiny = ["--hidden", "4", "--epochs", "0", "--quiet"]
    files["run"] = root / "run"
    assert cli.main(["train", "--dataset", "moons", *tiny, "--out", str(files["run"])]) == 0
    files["csvrun"] = root / "csvrun"
    argv = ["train", "--data", str(files["data.csv"]), "--label", "species", *tiny]
    assert cli.main([*argv, "--out", str(files["csvrun"])]) == 0
    files["held"] = root / "held"
    shutil.copytree(files["run"], files["held"])

    def history(name, lines):
        files[name] = root / name
        files[name].mkdir()
        (files[name] / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))

    epoch = '{{"epoch": {0}, "loss": {1}, "accuracy": 0.5, "val_loss": {1}}}'
    history("hist", [epoch.format(e, 1 / (e + 1)) for e in range(5)] + ['{"epoch": 5, "lo'])
    history("ensemble_hist", ['{"epoch": 0, "loss": [1, 2], "val_loss": [1, 3]}'] * 3)
    history("jsonl_only", ['{"loss": 1}', '{"loss": 0.5, "epoch": 7}', '{"epoch": 9}'])
    history("badhist", ["3", "[1, 2]", '{"loss": "x"}', '{"loss": true}', "null"])
    files["notjson"] = root / "notjson"
    files["notjson"].mkdir()
    (files["notjson"] / "metrics.json").write_text("{not json")
    return files


def test_generated_command_lines(world, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # defaults such as runs/latest land here
    for name in ("FUNCNET_COORDINATOR_ADDRESS", "FUNCNET_NUM_PROCESSES", "FUNCNET_PROCESS_ID"):
        monkeypatch.delenv(name, raising=False)
    specs = flags(world)
    cases = generate(specs)
    started = time.perf_counter()
    failures, codes, slow = [], Counter(), []
    for case in cases:
        began = time.perf_counter()
        code, out, err, raised = run(case.argv)
        slow.append((time.perf_counter() - began, case.argv))
        codes[case.command or "(none)", code] += 1
        found = problem(case, code, out, err, raised)
        if found:
            failures.append(f"funcnet {' '.join(map(repr, case.argv))}\n{found}")
    seconds = time.perf_counter() - started
    with capsys.disabled():
        ran = sum(case.runs for case in cases)
        print(f"\n{len(cases)} generated lists ({ran} that may run) in {seconds:.1f} s")
        for (command, code), n in sorted(codes.items(), key=str):
            print(f"  {command:<10} exit {code}: {n}")
        for took, argv in sorted(slow, key=lambda s: s[0], reverse=True)[:5]:
            print(f"  {took:5.1f} s  {' '.join(argv)}")
    assert not failures, f"{len(failures)} of {len(cases)} lists failed:\n\n" + "\n\n".join(
        failures[:8]
    )


def test_the_lists_cover_every_subcommand_and_flag(world):
    specs = flags(world)
    cases = generate(specs)
    assert len(cases) >= 2000
    parser = cli.build_parser()
    (commands,) = [a for a in parser._actions if a.dest == "command"]
    used = Counter(a for case in cases for a in case.argv if a.startswith("-"))
    used |= Counter(a.split("=")[0] for case in cases for a in case.argv if "=" in a)
    for name, sub in commands.choices.items():
        assert any(case.command == name for case in cases), name
        for action in sub._actions:
            for option in action.option_strings:
                if option.startswith("--") and option != "--help":
                    assert used[option], f"funcnet {name} {option} is never tried"
    assert sum(case.runs for case in cases) == sum(RUNS.values())
