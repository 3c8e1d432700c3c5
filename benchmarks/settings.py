"""How big and how long a run is: the full measurement, the quick check of the targets, or
the smoke run CI uses."""

from __future__ import annotations

from typing import NamedTuple

from benchmarks.workload import MEDIUM, MLP, SMALL, TINY


class Settings(NamedTuple):
    """The sizes and repeat counts of one run.

    Attributes:
      name: ``"full"``, ``"check"`` or ``"smoke"``, the key of these settings in `SETTINGS`.
      smoke: a smoke run (tiny sizes, one repeat): checks that the code works, measures nothing.
      repeats: timed repeats per figure; the median is reported.
      min_time: seconds one repeat lasts at least (the step count is chosen to reach it).
      mlps: the ``small`` and ``medium`` MLP workloads.
      epoch_steps: steps in one scan-fused epoch, per workload name.
      compile_repeats: fresh builds timed per contender in the compile section.
      compile_mlps: the workloads (names in `mlps`) the compile section times.
      hvp_sizes: approximate parameter counts of the second-order section.
      per_example_batches: batch sizes of the per-example gradient section.
      ensemble_sizes: ensemble sizes K.
      ensemble_epoch_steps: steps in one epoch of the ensemble section.
      matmul_size: n of the ``n × n`` float32 matmul that measures the peak.
      scaling_mlp: the workload (a name in `mlps`) of the data-parallel section.
      scaling_epoch_steps: steps in one epoch of the data-parallel section.
      scaling_devices: device counts of a one-process mesh.
      scaling_processes: process counts (one device each) of a multi-process mesh.
    """

    name: str
    smoke: bool
    repeats: int
    min_time: float
    mlps: dict[str, MLP]
    epoch_steps: dict[str, int]
    compile_repeats: int
    compile_mlps: tuple[str, ...]
    hvp_sizes: tuple[int, ...]
    per_example_batches: tuple[int, ...]
    ensemble_sizes: tuple[int, ...]
    ensemble_epoch_steps: int
    matmul_size: int
    scaling_mlp: str
    scaling_epoch_steps: int
    scaling_devices: tuple[int, ...]
    scaling_processes: tuple[int, ...]


FULL = Settings(
    name="full",
    smoke=False,
    repeats=5,
    min_time=0.2,
    mlps={"small": SMALL, "medium": MEDIUM},
    epoch_steps={"small": 500, "medium": 10},
    compile_repeats=3,
    compile_mlps=("small", "medium"),
    hvp_sizes=(100, 1_000, 10_000),
    per_example_batches=(1, 4, 16, 64, 256),
    ensemble_sizes=(1, 4, 16, 64),
    ensemble_epoch_steps=100,
    matmul_size=2048,
    scaling_mlp="medium",
    scaling_epoch_steps=16,
    scaling_devices=(1, 2, 4, 8),
    scaling_processes=(2,),
)

SMOKE = Settings(
    name="smoke",
    smoke=True,
    repeats=1,
    min_time=0.0,
    mlps={"small": TINY, "medium": MLP("medium", (8, 32, 32, 4), 8)},
    epoch_steps={"small": 4, "medium": 4},
    compile_repeats=1,
    compile_mlps=("small",),
    hvp_sizes=(20,),  # 50 gave the same 39-parameter MLP (hidden width 1) a second time
    per_example_batches=(4,),
    ensemble_sizes=(2,),
    ensemble_epoch_steps=4,
    matmul_size=64,
    scaling_mlp="medium",
    scaling_epoch_steps=4,
    scaling_devices=(2,),
    scaling_processes=(2,),
)

# `funcnet bench --check`: the targets' figures only, in under two minutes on 2 cores. The
# data-parallel rows train the small MLP (the medium one takes ~0.3 s a step on 8 forced
# devices of a 2-core CPU).
CHECK = FULL._replace(
    name="check",
    repeats=3,
    min_time=0.1,
    compile_mlps=("small",),
    per_example_batches=(256,),
    scaling_mlp="small",
    scaling_epoch_steps=100,
    scaling_devices=(2, 4, 8),
    scaling_processes=(),
)

SETTINGS = {s.name: s for s in (FULL, CHECK, SMOKE)}
