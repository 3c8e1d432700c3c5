"""Checkpoints across JAX versions: typed keys stored by a name every supported JAX reads back,
and files written under the lowest and the newest supported JAX that load under this one.

The fixtures in ``tests/data/`` hold `fixture_tree()`, written by this module run as a script
under the JAX named in the file's name::

    python -m tests.test_checkpoint_versions tests/data/checkpoint_jax_$(python -c \
        "import jax; print(jax.__version__)").npz

`make test-min` runs this file at the floor, so the newest JAX's file is read there too.
"""

import collections
import json
import sys
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcnet import checkpoint
from tests.helpers import ROOT

FIXTURES = sorted((ROOT / "tests" / "data").glob("checkpoint_jax_*.npz"))
Moments = collections.namedtuple("Moments", ["count", "mu", "nu"])


def fixture_tree() -> dict:
    """A train state's kinds of leaf and container, with values any version computes alike."""
    w = np.arange(12, dtype=np.float32).reshape(3, 4) / 8
    return {
        "params": {"dense_0": {"w": w, "b": np.full(4, -0.5, np.float32)}},
        "half": jnp.asarray(w, jnp.bfloat16),
        "opt_state": (Moments(np.int32(3), {"w": w / 2}, {"w": w**2}), None),
        "keys": [jax.random.key(42), jax.random.split(jax.random.key(7), 3)],
        "step": np.int32(17),
    }


def assert_same(got, want, *, structure: bool = True) -> None:
    """Leaf by leaf bit-equal; with `structure` the containers' types too (a load without a
    template rebuilds a NamedTuple as a new class of the same name and fields)."""
    if structure:
        assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        if jnp.issubdtype(b.dtype, jax.dtypes.prng_key):
            assert jax.random.key_impl(a) == jax.random.key_impl(b)
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def rewrite_header(path, change) -> None:
    """Applies `change` to the header of the checkpoint at `path` (the payload's digest does
    not cover the header, so the file stays loadable)."""
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    header = json.loads(members[checkpoint.HEADER])
    change(header)
    members[checkpoint.HEADER] = json.dumps(header).encode()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def test_the_header_names_the_jax_that_wrote_it_and_keys_by_their_full_name(tmp_path):
    path = checkpoint.save(tmp_path / "c.npz", {"key": jax.random.key(0)})
    with zipfile.ZipFile(path) as archive:
        header = json.loads(archive.read(checkpoint.HEADER))
    assert header["jax"] == jax.__version__
    assert header["leaves"][0]["key_impl"] == "threefry2x32"


def test_a_key_stored_by_its_short_tag_loads_as_that_implementation(tmp_path):
    """JAX 0.4 stored `str(key_impl(key))`, "fry", which it could not read back."""
    tree = {"key": jax.random.key(3)}
    path = checkpoint.save(tmp_path / "c.npz", tree)

    def to_tag(header):
        header["leaves"][0]["key_impl"] = "fry"
        del header["jax"]

    rewrite_header(path, to_tag)
    assert_same(checkpoint.load(path), tree)
    assert_same(checkpoint.load(path, like=tree), tree)


def test_a_key_of_an_implementation_this_jax_lacks_is_one_line_naming_it(tmp_path):
    path = checkpoint.save(tmp_path / "c.npz", {"key": jax.random.key(3)})

    def to_unknown(header):
        header["leaves"][0]["key_impl"] = "squares32"
        header["jax"] = "9.1.0"

    rewrite_header(path, to_unknown)
    with pytest.raises(checkpoint.CheckpointError) as err:
        checkpoint.load(path)
    message = str(err.value)
    assert "\n" not in message
    assert "leaf key" in message and "'squares32'" in message
    assert f"this JAX ({jax.__version__}) lacks" in message and "JAX 9.1.0" in message


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_a_file_written_under_another_supported_jax_loads(path):
    want = fixture_tree()
    assert_same(checkpoint.load(path), want, structure=False)
    assert_same(checkpoint.load(path, like=want), want)


def test_there_are_fixtures_of_the_floor_and_of_a_newer_jax():
    versions = [p.stem.removeprefix("checkpoint_jax_") for p in FIXTURES]
    floor = next(
        line.split(">=")[1].split('"')[0]
        for line in (ROOT / "pyproject.toml").read_text().splitlines()
        if line.strip().startswith('"jax>=')
    )
    assert floor in versions and len(versions) >= 2, versions


if __name__ == "__main__":
    checkpoint.save(sys.argv[1], fixture_tree(), metadata={"jax": jax.__version__})
