"""The wheel holds the library and its command, nothing else, and works once installed.

A wheel is built from a copy of the checkout (so that no `build/` folder or stale build
output of the checkout can leak in), read, installed into a bare folder with `pip --target`,
and imported from a working directory outside the checkout. The benchmark suite, the tests and
the examples stay in the repository: `python -m benchmarks.run` and `funcnet bench` run them
from a source tree, and an installed funcnet that lacks them says so in one line.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import pathlib
import shutil
import subprocess
import sys
import tomllib
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SUBPACKAGES = ("nn", "optim", "diff", "train", "data", "app")
NOT_SHIPPED = ("benchmarks", "tests", "examples", "docs")
# Left behind by builds, editors and runs; never part of what is packaged.
SCRATCH = (
    ".git",
    ".venv*",
    "build",
    "dist",
    "runs",
    "out",
    "*.egg-info",
    "__pycache__",
    "*.pyc",
    ".pytest_cache",
    ".ruff_cache",
    ".hypothesis",
)


def _build_backend_missing() -> str | None:
    """Why a wheel cannot be built offline with this interpreter, or None when it can."""
    if importlib.util.find_spec("pip") is None:
        return "pip is not installed in this interpreter"
    if importlib.util.find_spec("setuptools") is None:
        return "setuptools (the build backend) is not installed; --no-build-isolation needs it"
    version = importlib.metadata.version("setuptools")
    if int(version.split(".")[0]) < 77:
        return f"setuptools {version} is older than the >=77 that pyproject.toml requires"
    return None


pytestmark = pytest.mark.skipif(
    _build_backend_missing() is not None,
    reason=f"cannot build a wheel offline: {_build_backend_missing()}",
)


def _run(args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=180, **kwargs)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> pathlib.Path:
    """A wheel of the checkout, built offline from a copy of its tree."""
    tmp = tmp_path_factory.mktemp("packaging")
    source = tmp / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*SCRATCH))
    dist = tmp / "dist"
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    built = _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--quiet", "-w", str(dist), str(source)],
        env=env,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    (found,) = dist.glob("funcnet-*.whl")
    return found


@pytest.fixture(scope="module")
def site(wheel) -> pathlib.Path:
    """The wheel installed, alone, into a bare folder."""
    target = wheel.parent.parent / "site"
    installed = _run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet",
         "--disable-pip-version-check", "--target", str(target), str(wheel)]
    )  # fmt: skip
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return target


def _python(site: pathlib.Path, cwd: pathlib.Path, *args: str) -> subprocess.CompletedProcess:
    """This interpreter (which has jax and friends) with the installed wheel first on its path."""
    env = {**os.environ, "PYTHONPATH": str(site), "JAX_PLATFORMS": "cpu"}
    env.pop("PYTHONSAFEPATH", None)
    return _run([sys.executable, *args], cwd=cwd, env=env)


# A developer's editable install of funcnet registers an import hook that maps the checkout's
# packages (and, before this packaging fix, `benchmarks` too); it is dropped where a check
# needs to see the wheel alone.
WHEEL_ONLY = (
    "import sys; sys.meta_path[:] = [f for f in sys.meta_path "
    "if not getattr(f, '__module__', '').startswith('__editable___funcnet')]; "
)


def test_wheel_holds_the_library_its_data_and_its_command_only(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        dist_info = {n.split("/")[0] for n in names if ".dist-info/" in n}
        assert len(dist_info) == 1, dist_info
        (dist_info,) = dist_info
        entry_points = archive.read(f"{dist_info}/entry_points.txt").decode()

    tops = {name.split("/")[0] for name in names}
    assert tops == {"funcnet", dist_info}, f"unexpected top-level entries: {tops}"
    for folder in NOT_SHIPPED:
        assert not any(n.startswith(f"{folder}/") for n in names), folder
        assert not any(f"/{folder}/" in n for n in names if n.startswith("funcnet/")), folder

    assert "funcnet/__init__.py" in names
    for sub in SUBPACKAGES:
        assert f"funcnet/{sub}/__init__.py" in names, sub
    assert "funcnet/app/cli/__init__.py" in names
    assert "funcnet/data/tiny_text.txt" in names

    # Every source and data file of the package ships: a data file added without a matching
    # package-data pattern would be missing from the wheel and fail here.
    package = ROOT / "funcnet"
    wanted = {
        path.relative_to(ROOT).as_posix()
        for path in package.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }
    assert wanted <= names, f"missing from the wheel: {sorted(wanted - names)}"

    lines = [line.replace(" ", "") for line in entry_points.splitlines()]
    assert "[console_scripts]" in lines
    assert "funcnet=funcnet.app.cli:main" in lines


def test_installed_wheel_imports_and_runs_outside_the_checkout(site, tmp_path):
    assert (site / "funcnet" / "data" / "tiny_text.txt").is_file()
    for folder in NOT_SHIPPED:
        assert not (site / folder).exists(), folder
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    shown = _python(
        site,
        elsewhere,
        "-c",
        WHEEL_ONLY + "import funcnet, funcnet.data.text as t; print(funcnet.__version__); "
        "print(funcnet.__file__); print(len(t.resources.files('funcnet.data')"
        ".joinpath('tiny_text.txt').read_text('utf-8')))",
    )
    assert shown.returncode == 0, shown.stderr
    version, where, size = shown.stdout.split()
    assert version == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert pathlib.Path(where).resolve().is_relative_to(site.resolve()), where
    assert not pathlib.Path(where).resolve().is_relative_to(ROOT), where
    assert int(size) > 1000

    helped = _python(site, elsewhere, "-m", "funcnet.app.cli", "--help")
    assert helped.returncode == 0, helped.stderr
    assert "usage: funcnet" in helped.stdout
    for command in ("train", "eval", "hessian", "bench"):
        assert command in helped.stdout

    # No benchmark suite beside an installed funcnet: one clear line, no traceback.
    bench = _python(
        site,
        elsewhere,
        "-c",
        WHEEL_ONLY + "import importlib.util; assert not importlib.util.find_spec('benchmarks'); "
        "from funcnet.app.cli import main; raise SystemExit(main(['bench', '--smoke']))",
    )
    assert bench.returncode == 2, bench.stdout + bench.stderr
    assert "Traceback" not in bench.stderr
    message = bench.stderr.strip().splitlines()
    assert len(message) == 1 and "benchmarks/run.py" in message[0], bench.stderr
