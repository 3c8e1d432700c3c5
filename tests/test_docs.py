"""The documentation runs: every ```python block of README.md and docs/*.md is executed.

The blocks of one file run in order, in one namespace, in a fresh working folder (files they
write land there). HTML comments, invisible on the rendered page, around a block:

- ``<!-- setup: CODE -->`` just before it: CODE runs first, in the same namespace (the data
  or the model a fragment takes for granted);
- ``<!-- check: CODE -->`` just after it: CODE runs after it (assertions on what the block
  computed, where an ``assert`` in the block itself would read badly);
- ``<!-- skip: REASON -->`` just before it: the block does not run; the reason is required.

CODE may span lines, up to the closing ``-->``. Values a block's text states in a comment
are asserts in the block or in its check. The pages run in two fresh processes, half of
them in each, compiled with the suite's XLA flags (conftest.py); a block that fails is
reported with its file and line. A block skipped as "signatures" is checked against the
functions it lists instead.
"""

from __future__ import annotations

import ast
import functools
import inspect
import json
import os
import pathlib
import re
import subprocess
import sys
import traceback
from subprocess import PIPE
from typing import NamedTuple

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\s*$")
MARKER = re.compile(r"<!--\s*(setup|check|skip):(.*?)-->", re.S)


class Block(NamedTuple):
    line: int  # of the opening fence, 1-based
    code: str
    setup: str
    check: str
    skip: str | None


def blocks(path: pathlib.Path) -> list[Block]:
    """The ```python blocks of a markdown file with the markers around them."""
    lines = path.read_text().splitlines()
    found, i = [], 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        if fence.group(1) == "python":
            before = _comment(lines, i, step=-1)
            after = _comment(lines, end, step=1)
            marks = {kind: text for kind, text in MARKER.findall(before)}
            checks = {kind: text for kind, text in MARKER.findall(after)}
            found.append(
                Block(
                    i + 1,
                    "\n".join(lines[i + 1 : end]),
                    _dedent(marks.get("setup", "")),
                    _dedent(checks.get("check", "")),
                    marks["skip"].strip() if "skip" in marks else None,
                )
            )
        i = end + 1
    return found


def _comment(lines: list[str], at: int, *, step: int) -> str:
    """The HTML comment next to line `at` (before it for step -1, after for 1), blank lines
    between allowed; '' when there is none."""
    j = at + step
    while 0 <= j < len(lines) and not lines[j].strip():
        j += step
    if not 0 <= j < len(lines):
        return ""
    if step < 0 and lines[j].rstrip().endswith("-->"):
        start = j
        while "<!--" not in lines[start]:
            start -= 1
        return "\n".join(lines[start : j + 1])
    if step > 0 and lines[j].lstrip().startswith("<!--"):
        end = j
        while "-->" not in lines[end]:
            end += 1
        return "\n".join(lines[j : end + 1])
    return ""


def _dedent(code: str) -> str:
    lines = code.strip("\n").splitlines()
    if len(lines) == 1:
        return lines[0].strip()
    return inspect.cleandoc("\n" + "\n".join(lines))


def run_file(path: pathlib.Path) -> str | None:
    """Runs a file's blocks in order in one namespace; the failure, naming the block's line
    and part, or None."""
    namespace = {"__name__": f"docs_{path.stem}"}
    for block in blocks(path):
        if block.skip is not None:
            continue
        for part, code in (("setup", block.setup), ("block", block.code), ("check", block.check)):
            if not code:
                continue
            where = f"{path.relative_to(ROOT)}:{block.line} ({part})"
            try:
                exec(compile(code, where, "exec"), namespace)
            except Exception:
                return f"{where} failed:\n{code}\n\n{traceback.format_exc()}"
    return None


def run_all(folder: pathlib.Path, names: list[str]) -> dict[str, str | None]:
    """The blocks of the pages `names`, each page in a fresh folder under `folder`."""
    import funcnet.data

    # The pages' digits are the same whichever page asks: load them once.
    funcnet.data.digits = functools.cache(funcnet.data.digits)
    outcomes = {}
    for path in FILES:
        if path.name in names:
            (folder / path.stem).mkdir()
            os.chdir(folder / path.stem)
            outcomes[path.name] = run_file(path)
    return outcomes


# The pages run in two processes at once, these in one and the rest in the other: about
# the same compile time each, so on two cores the whole takes about half as long.
FIRST_HALF = {"README.md", "differentiation.md", "second_order.md", "optimizers.md"}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """Every page run in a fresh process: ``{file name: None, or its failure}``."""
    folder = tmp_path_factory.mktemp("docs")
    env = {**os.environ, "MPLBACKEND": "Agg", "JAX_PLATFORMS": "cpu"}
    names = [p.name for p in FILES]
    halves = [[n for n in names if n in FIRST_HALF], [n for n in names if n not in FIRST_HALF]]
    runs = []
    for i, half in enumerate(halves):
        (folder / str(i)).mkdir()
        command = [sys.executable, __file__, str(folder / str(i)), *half]
        runs.append(subprocess.Popen(command, env=env, stdout=PIPE, stderr=PIPE, text=True))
    found = {}
    for i, run in enumerate(runs):
        _, err = run.communicate(timeout=900)
        report = folder / str(i) / "outcomes.json"
        assert run.returncode == 0 and report.exists(), err[-3000:]
        found |= json.loads(report.read_text())
    assert sorted(found) == sorted(names)
    return found


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_the_python_blocks_run(path, outcomes):
    assert outcomes[path.name] is None, outcomes[path.name]


def test_every_skip_says_why_and_skips_are_few():
    skipped = [(path.name, b.line, b.skip) for path in FILES for b in blocks(path) if b.skip]
    ran = sum(not b.skip for path in FILES for b in blocks(path))
    assert all(reason for _, _, reason in skipped), skipped
    assert ran >= 35 and len(skipped) <= 3, (ran, skipped)


def test_the_markers_are_read(tmp_path):
    text = """
<!-- setup: x = 1 -->

```python
y = x + 1
```
<!-- check:
assert y == 2
-->

<!-- skip: a signature -->
```python
f(a, *, b) -> c
```
"""
    page = tmp_path / "page.md"
    page.write_text(text)
    first, second = blocks(page)
    assert (first.setup, first.code, first.check) == ("x = 1", "y = x + 1", "assert y == 2")
    assert first.skip is None
    assert second.skip == "a signature" and second.code == "f(a, *, b) -> c"


def test_signature_blocks_give_the_real_signatures():
    """A block skipped as "signatures" lists ``name(args) -> result`` lines: each must match
    the function of that name in funcnet.diff, argument by argument, defaults included."""
    import funcnet.diff

    seen = 0
    for path in FILES:
        for block in blocks(path):
            if not (block.skip or "").startswith("signatures"):
                continue
            code = re.sub(r"#[^\n]*", "", block.code)
            for name, args in re.findall(r"(\w+)\(([^()]*)\)\s*->", code, re.S):
                shown = ast.parse(f"def f({args}): pass").body[0].args
                real = inspect.signature(getattr(funcnet.diff, name)).parameters.values()
                names = [a.arg for a in [*shown.posonlyargs, *shown.args, *shown.kwonlyargs]]
                if shown.kwarg:
                    names.append(shown.kwarg.arg)
                assert names == [p.name for p in real], (path.name, name)
                defaults = [*shown.defaults, *(d for d in shown.kw_defaults if d is not None)]
                real_defaults = [p.default for p in real if p.default is not p.empty]
                assert [ast.literal_eval(d) for d in defaults] == real_defaults, name
                seen += 1
    assert seen >= 2


# The table of docs/conventions.md: each `name(args)` against the function's signature.
CONVENTIONS = {
    "fit": "funcnet.train.fit",
    "make_step": "funcnet.train.make_step",
    "make_evaluate": "funcnet.train.make_evaluate",
    "eval_step": "funcnet.train.eval_step",
    "jacobian": "funcnet.diff.jacobian",
    "hvp": "funcnet.diff.hvp",
    "hessian_eigs": "funcnet.diff.hessian_eigs",
    "huber": "funcnet.losses.huber",
    "leaky_relu": "funcnet.nn.leaky_relu",
    "softmax": "funcnet.nn.softmax",
    "dense": "funcnet.nn.dense",
    "max_pool": "funcnet.nn.max_pool",
    "transformer_block": "funcnet.nn.transformer_block",
    "adam": "funcnet.optim.adam",
    "scale_by_adam": "funcnet.optim.scale_by_adam",
    "moons": "funcnet.data.moons",
    "digits": "funcnet.data.digits",
    "checkpoint.save": "funcnet.checkpoint.save",
    "checkpoint.load": "funcnet.checkpoint.load",
}


def _resolve(dotted: str):
    module, _, name = dotted.rpartition(".")
    return getattr(__import__(module, fromlist=[name]), name)


def test_the_conventions_table_gives_the_real_signatures():
    rows = (ROOT / "docs/conventions.md").read_text().splitlines()
    table = "\n".join(line for line in rows if line.startswith("| "))
    listed = re.findall(r"`((?:checkpoint\.)?\w+)\(([^`]*)\)`", table)
    checked = set()
    for name, args in listed:
        if name not in CONVENTIONS:
            continue
        starred = re.search(r"(^|, )\*(,|$)", args) is not None
        args = re.sub(r",? *\.\.\.", "", args)  # "..." stands for settings left out
        args = re.sub(r",? *\*$", "", args.strip())  # a bare * with nothing after it
        shown = ast.parse(f"def f({args}): pass").body[0].args
        real = inspect.signature(_resolve(CONVENTIONS[name])).parameters.values()
        positional = [p.name for p in real if p.kind <= p.POSITIONAL_OR_KEYWORD]
        keyword = [p.name for p in real if p.kind == p.KEYWORD_ONLY]
        assert [a.arg for a in shown.args] == positional[: len(shown.args)], name
        if starred:  # every positional argument is listed before the *
            assert len(shown.args) == len(positional), f"{name}: {positional}"
        for arg in shown.kwonlyargs:
            assert arg.arg in keyword, f"{name}: {arg.arg} is not keyword-only in {keyword}"
        defaults = {p.name: p.default for p in real}
        for arg, default in zip(shown.kwonlyargs, shown.kw_defaults, strict=True):
            if default is not None:
                assert ast.literal_eval(default) == defaults[arg.arg], (name, arg.arg)
        checked.add(name)
    assert checked == set(CONVENTIONS)


def test_the_sample_output_of_funcnet_train_is_what_it_prints(tmp_path):
    """docs/training.md's transcript of `funcnet train`, its numbers and paths aside."""
    text = (ROOT / "docs/training.md").read_text()
    (sample,) = re.findall(r"```\n\$ (funcnet train [^\n]*)\n(.*?)```", text, re.S)
    command, shown = sample
    argv = command.split()[1:]
    out = argv[argv.index("--out") + 1]
    argv[argv.index("--out") + 1] = str(tmp_path / "run")
    argv += ["--dataset", "moons", "--epochs", "2", "--hidden", "4"]  # quick; the same lines
    printed = subprocess.run(
        [sys.executable, "-m", "funcnet.app.cli", *argv],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    ).stdout

    def shape(lines: str, folder: str) -> list[str]:
        lines = lines.replace(folder, "FOLDER")
        return [re.sub(r"\d+(\.\d+)?", "N", line) for line in lines.strip().splitlines()]

    assert shape(printed, str(tmp_path / "run")) == shape(shown, out)


if __name__ == "__main__":  # the fixture's processes: python tests/test_docs.py FOLDER PAGE...
    results = run_all(pathlib.Path(sys.argv[1]), sys.argv[2:])
    (pathlib.Path(sys.argv[1]) / "outcomes.json").write_text(json.dumps(results))
    # Done: skip JAX's exit handler, which frees every program compiled (2 s of each page run).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
