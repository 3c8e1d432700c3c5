"""`nn.summary` against the real `init` and `apply` of each kind of model, and a hand count."""

import concurrent.futures
import importlib
import inspect
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcnet import nn
from funcnet.nn.summary import Summary


def _float(shape):
    return jnp.ones(shape, jnp.float32)


def _transformer():
    return [nn.transformer_block(2, 16), nn.transformer_block(2, 16, causal=True)]


# name -> (children of a top-level serial, in_shape, input of that shape)
ARCHITECTURES = {
    "mlp": ([nn.dense(32), nn.relu, nn.dense(16), jax.nn.tanh, nn.dense(3)], (4, 8), _float),
    "cnn": (
        [
            nn.conv(8, 3),
            nn.batch_norm(),
            nn.relu,
            nn.max_pool(2),
            nn.conv(4, (3, 3), padding="VALID"),
            nn.avg_pool(2, strides=1),
            nn.flatten(),
            nn.dense(5),
        ],
        (2, 10, 10, 3),
        _float,
    ),
    "residual": (
        [nn.dense(12), nn.residual(nn.dense(12), nn.relu, nn.layer_norm()), nn.dense(2)],
        (3, 5),
        _float,
    ),
    "parallel": (
        [
            nn.parallel(nn.dense(6), nn.serial(nn.dense(4), nn.relu)),
            nn.concat(),
            nn.fanout(2),
            nn.parallel(nn.dense(3), nn.dense(3)),
            nn.sum(),
        ],
        ((2, 5), (2, 7)),
        lambda shapes: tuple(_float(s) for s in shapes),
    ),
    "gru": ([nn.gru(6), nn.gru(5, return_sequences=False), nn.dense(2)], (3, 7, 4), _float),
    "lstm": (
        [nn.lstm(6, bidirectional=True), nn.lstm(5, return_sequences=False), nn.dense(2)],
        (3, 7, 4),
        _float,
    ),
    "embedding_transformer": (
        [nn.embedding(20, 16), *_transformer(), nn.global_avg_pool(), nn.dense(4)],
        (2, 9),
        lambda s: jnp.zeros(s, jnp.int32),
    ),
    "nested": (
        [
            nn.serial(nn.dense(8), nn.serial(nn.dense(8), nn.batch_norm()), nn.relu),
            nn.serial(nn.serial(nn.serial(nn.dense(3)))),
            nn.weight_norm(nn.dense(2)),
        ],
        (4, 6),
        _float,
    ),
}


@pytest.fixture(params=list(ARCHITECTURES), scope="module")
def case(request):
    """A model with its real params, state and output, and its summary."""
    children, in_shape, make_input = ARCHITECTURES[request.param]
    model = nn.serial(*children)
    _, params, state = model.init(jax.random.key(0), in_shape)
    y, _ = model.apply(params, state, make_input(in_shape))
    return children, in_shape, make_input, params, state, y, nn.summary(model, in_shape)


def _real_leaves(tree):
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {"/".join(str(k.key) for k in path): leaf for path, leaf in flat}


def _summary_leaves(summary, field):
    return {
        "/".join(p for p in (row.path, leaf) if p): shape
        for row in summary.rows
        for leaf, shape in getattr(row, field).items()
    }


def test_totals_are_the_real_counts_and_bytes(case):
    *_, params, state, _, summary = case
    assert summary.param_count == nn.param_count(params)
    assert summary.param_count == sum(leaf.size for leaf in jax.tree.leaves(params))
    assert summary.param_bytes == sum(leaf.nbytes for leaf in jax.tree.leaves(params))
    assert summary.state_count == sum(leaf.size for leaf in jax.tree.leaves(state))
    assert summary.state_bytes == sum(leaf.nbytes for leaf in jax.tree.leaves(state))
    assert summary.param_count == sum(row.param_count for row in summary.rows)


def test_every_param_and_state_leaf_is_listed_once_with_its_shape(case):
    *_, params, state, _, summary = case
    for field, tree in (("params", params), ("state", state)):
        real = {path: leaf.shape for path, leaf in _real_leaves(tree).items()}
        assert _summary_leaves(summary, field) == real
    for row in summary.rows:
        assert row.param_count == sum(math.prod(s) for s in row.params.values())


def test_output_shapes_are_those_apply_produces(case):
    children, in_shape, make_input, params, state, y, summary = case
    top = summary.rows[0]
    assert (top.path, top.kind, top.in_shape) == ("", "serial", in_shape)
    assert top.out_shape == jax.tree.map(lambda a: a.shape, y)
    rows = {row.path: row for row in summary.rows}
    x = make_input(in_shape)
    for i, child in enumerate(children):
        name = f"{nn.layer_name(child)}_{i}"
        x, _ = nn.as_layer(child).apply(params[name], state.get(name, {}), x)
        assert rows[name].out_shape == jax.tree.map(lambda a: a.shape, x), name


def test_the_table_lists_every_path_and_the_totals(case):
    *_, summary = case
    lines = str(summary).splitlines()
    assert lines[0].split()[:3] == ["path", "kind", "output"]
    starts = [line.split()[0] for line in lines[1:] if line[:1].strip()]
    assert starts == ["(model)"] + [row.path for row in summary.rows[1:]] + ["total"]
    total = lines[-1].split()
    assert f"{summary.param_count:,}" in total
    assert ("state" in lines[0]) == (summary.state_count > 0)
    widths = {len(line) for line in lines if line.split()[0] in {"path", "total"}}
    assert len(widths) == 1, "the header and the totals line up"


def test_a_small_mlp_matches_a_hand_computed_table():
    summary = nn.summary(nn.serial(nn.dense(128), nn.relu, nn.dense(10)), (32, 64))
    # 64·128 + 128 = 8,320 and 128·10 + 10 = 1,290 float32 params, 4 bytes each.
    assert summary.param_count == 8_320 + 1_290
    assert summary.param_bytes == 4 * 9_610
    assert summary.state_count == summary.state_bytes == 0
    assert [(r.path, r.kind, r.out_shape, r.param_count) for r in summary.rows] == [
        ("", "serial", (32, 10), 0),
        ("dense_0", "dense", (32, 128), 8_320),
        ("relu_1", "relu", (32, 128), 0),
        ("dense_2", "dense", (32, 10), 1_290),
    ]
    assert summary.rows[1].params == {"w": (64, 128), "b": (128,)}
    assert str(summary) == "\n".join(
        [
            "path     kind    output shape  params  param shapes             bytes",
            "(model)  serial  (32, 10)           0",
            "dense_0  dense   (32, 128)      8,320  w (64, 128), b (128,)  33.3 KB",
            "relu_1   relu    (32, 128)          0",
            "dense_2  dense   (32, 10)       1,290  w (128, 10), b (10,)    5.2 KB",
            "total                           9,610                         38.4 KB",
        ]
    )


def test_batch_norm_statistics_are_state_not_params():
    summary = nn.summary(nn.serial(nn.conv(16, 3), nn.batch_norm(), nn.relu), (8, 6, 6, 2))
    row = {r.path: r for r in summary.rows}["batch_norm_1"]
    assert row.params == {"scale": (16,), "bias": (16,)}
    assert row.state == {"mean": (16,), "var": (16,)}
    assert (row.param_count, row.state_count, row.state_bytes) == (32, 32, 128)
    assert summary.param_count == 3 * 3 * 2 * 16 + 16 + 32
    assert (summary.state_count, summary.state_bytes) == (32, 128)
    header, *_, total = str(summary).splitlines()
    assert header.split()[-3:] == ["state", "state", "bytes"]
    assert total.split()[-3:] == ["32", "128", "B"]


def test_nested_combinators_give_nested_paths_and_their_shapes():
    block = nn.residual(nn.dense(4), nn.relu)
    branches = nn.parallel(nn.serial(nn.dense(4), block), nn.dense(2))
    summary = nn.summary(nn.serial(branches, nn.concat()), ((5, 4), (5, 1)))
    shapes = {row.path: row.out_shape for row in summary.rows}
    assert shapes == {
        "": (5, 6),
        "parallel_0": ((5, 4), (5, 2)),
        "parallel_0/serial_0": (5, 4),
        "parallel_0/serial_0/dense_0": (5, 4),
        "parallel_0/serial_0/residual_1": (5, 4),
        "parallel_0/serial_0/residual_1/dense_0": (5, 4),
        "parallel_0/serial_0/residual_1/relu_1": (5, 4),
        "parallel_0/dense_1": (5, 2),
        "concat_1": (5, 6),
    }
    assert list(shapes) == [row.path for row in summary.rows], "parents before children"


def test_transformer_block_lists_its_mlp_and_its_other_params_on_its_row():
    summary = nn.summary(nn.transformer_block(2, 32), ((3, 5, 8), (3, 5)))
    top, *rest = summary.rows
    assert top.out_shape == ((3, 5, 8), (3, 5))
    mlp = ["dense_0", "gelu_1", "dropout_2", "dense_3", "dropout_4"]
    assert [r.path for r in rest] == [f"mlp/{name}" for name in mlp]
    assert top.params["attention/q/w"] == (8, 8)
    assert top.params["norm_2/scale"] == (8,)
    assert not any(k.startswith("mlp") for k in top.params)


def test_bytes_follow_the_dtype_and_read_in_decimal_units():
    small = nn.summary(nn.dense(4, dtype=jnp.bfloat16), (1, 3))
    assert (small.param_count, small.param_bytes) == (16, 32)
    assert str(small).splitlines()[-1].endswith("32 B")
    # 10¹⁰ float32 params: only their shapes exist, so this takes no memory.
    huge = nn.summary(nn.dense(100_000), (1, 100_000))
    assert huge.param_count == 100_000 * 100_000 + 100_000
    assert str(huge).splitlines()[-1].endswith("40.0 GB")


def test_init_is_only_traced_and_apply_never_runs():
    seen = []

    def init(key, in_shape):
        seen.append(isinstance(key, jax.core.Tracer))
        return nn.dense(3).init(key, in_shape)

    def apply(params, state, x, *, key=None, train=False):
        raise AssertionError("summary must not apply the model")

    summary = nn.summary(nn.serial(nn.Layer(init, apply, kind="probe")), (2, 4))
    assert seen == [True]
    assert summary.rows[1].path == "probe_0" and summary.rows[1].out_shape == (2, 3)


def test_key_and_list_shapes_are_accepted():
    model = nn.serial(nn.dense(3), nn.relu)
    expected = nn.summary(model, (2, 4))
    assert nn.summary(model, [2, 4], key=jax.random.PRNGKey(7)) == expected
    assert nn.summary(model, (np.int64(2), np.int64(4))) == expected
    assert isinstance(expected, Summary)


def test_summaries_in_threads_do_not_see_each_other():
    models = [nn.serial(*[nn.dense(4)] * n) for n in range(1, 9)]
    expected = [nn.summary(m, (2, 4)) for m in models]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda m: nn.summary(m, (2, 4)), models))
    assert got == expected
    assert [len(s.rows) for s in got] == list(range(2, 10))


def test_observe_inits_reports_each_child_with_its_path():
    calls = []

    def record(path, layer, in_shape, out_shape, params, state):
        calls.append((path, layer.kind, in_shape, out_shape, sorted(params), sorted(state)))

    model = nn.serial(nn.dense(3), nn.serial(nn.batch_norm()))
    with nn.core.observe_inits(record):
        model.init(jax.random.key(0), (2, 4))
    model.init(jax.random.key(0), (2, 4))  # not observed once the context is left
    assert calls == [
        (("dense_0",), "dense", (2, 4), (2, 3), ["b", "w"], []),
        (
            ("serial_1", "batch_norm_0"),
            "batch_norm",
            (2, 3),
            (2, 3),
            ["bias", "scale"],
            ["mean", "var"],
        ),
        (("serial_1",), "serial", (2, 3), (2, 3), ["batch_norm_0"], ["batch_norm_0"]),
    ]


@pytest.mark.parametrize(
    ("model", "in_shape", "error", "message"),
    [
        (nn.serial(nn.conv(8, 3)), (32, 64), nn.LayerError, r"^conv_0: expected"),
        (nn.serial(nn.dense(8), nn.gru(4)), (32, 64), nn.LayerError, r"^gru_1: expected"),
        (nn.serial(nn.residual(nn.dense(5))), (2, 3), nn.LayerError, r"^residual_0: the branch"),
        (nn.parallel(nn.dense(3), nn.dense(2)), ((2, 3),), nn.LayerError, r"^parallel: expected"),
        (
            nn.parallel(nn.dense(3), nn.dense(2)),
            (32, 64),
            nn.LayerError,
            r"^parallel: expected a tuple of input shapes, one per layer; got one shape",
        ),
        (
            nn.serial(nn.dense(4), lambda x: x @ jnp.ones((5, 3))),
            (2, 3),
            ValueError,
            r"dot_general",
        ),
        (nn.dense(3), (2, -1), ValueError, r"negative"),
        (nn.dense(3), "2x3", TypeError, r"in_shape must be a shape"),
        (lambda x: x, (2, 3), TypeError, r"expected a Layer"),
    ],
)
def test_an_in_shape_that_does_not_fit_is_refused(model, in_shape, error, message):
    with pytest.raises(error, match=message):
        nn.summary(model, in_shape)


def test_the_module_lists_its_public_names():
    module = importlib.import_module("funcnet.nn.summary")
    defined = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and (inspect.isfunction(value) or inspect.isclass(value))
        and value.__module__ == module.__name__
    }
    assert defined == set(module.__all__) == {"Row", "Summary", "summary"}
    assert nn.summary is module.summary
