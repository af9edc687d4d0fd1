"""Data reaches the workers through Ray Data (``TorchTrainer(datasets=...)``), never in the job spec."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from project import make_project, read_json, run_stage
from servers import HEAD_IP, WORKER_IP, ray_node

from components.config import LoadingConfig
from components.data.dataset import DataError, load_split
from components.distributed import datasets
from components.distributed.datasets import (
    ROWS_PER_BLOCK,
    ArraySource,
    LocalData,
    PreparedSource,
    blocks_dataset,
    prepared,
    put_block,
)
from components.distributed.inference_jobs import merge_chunks
from components.distributed.jobs import FeaturesJob, SampleJob, SampleSet
from components.distributed.runner import check_small


def test_job_with_an_array_is_refused() -> None:
    check_small(FeaturesJob(checkpoint=b"weights", image_sets=("samples",), batch_size=10))
    images = np.zeros((2, 1, 28, 28), np.uint8)
    with pytest.raises(TypeError, match=r"job\[sets.samples.checkpoint\] is an array"):
        check_small(SampleJob(name="gan", sets={"samples": SampleSet(images, 2)}, batch_size=1, seed=0))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="bytes pickled"):
        check_small(FeaturesJob(checkpoint=b"x" * 2000, image_sets=(), batch_size=1), limit=1000)


def test_auto_loading_keeps_a_share_in_memory_up_to_the_bound() -> None:
    cfg = LoadingConfig(memory_limit_mb=1)
    assert cfg.resolve(2 << 20, world_size=2) == "memory"
    assert cfg.resolve(3 << 20, world_size=2) == "stream"
    assert LoadingConfig(mode="stream").resolve(10, 1) == "stream"


def test_prepared_source_is_the_verified_split(tmp_path) -> None:
    project = make_project(tmp_path / "p")
    data = project / "data" / "prepared"
    rows = LocalData(prepared(data, "train")).arrays()
    want = load_split(data, "train")
    np.testing.assert_array_equal(rows["image"].reshape(want.images.shape), want.images)
    np.testing.assert_array_equal(rows["label"], want.labels)
    shard = next((data / "train").glob("*.parquet"))
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(DataError, match=f"{shard}: checksum mismatch.*re-run"):
        prepared(data, "train")


def test_merge_orders_chunks_by_index(tmp_path) -> None:
    np.savez(tmp_path / "chunk_001_000000.npz", features=np.array([[1.0], [3.0]]), index=np.array([1, 3]))
    np.savez(tmp_path / "chunk_000_000000.npz", features=np.array([[2.0], [0.0]]), index=np.array([2, 0]))
    merged = merge_chunks(tmp_path)
    assert set(merged) == {"features"}
    np.testing.assert_array_equal(merged["features"][:, 0], [0.0, 1.0, 2.0, 3.0])


def test_array_source_rows_in_plain_mode() -> None:
    images = np.arange(5 * 4, dtype=np.uint8).reshape(5, 1, 2, 2)
    rows = LocalData(ArraySource(images, np.arange(5) % 2)).arrays()
    np.testing.assert_array_equal(rows["image"], images.reshape(5, 4))
    np.testing.assert_array_equal(rows["index"], np.arange(5))
    batches = list(LocalData(ArraySource(images)).batches(2))
    assert [len(b["image"]) for b in batches] == [2, 2, 1]



@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_the_driver_deals_rows_to_the_ranks_in_turn_in_equal_shares(tmp_path, monkeypatch, world_size) -> None:
    """Row i of the split to rank i % W across shard files of uneven sizes; shares cut to equal
    length (equal steps on every rank); whole blocks but the last; the padding of an ArraySource kept."""
    import pyarrow.parquet as pq

    from components.data.shards import image_table

    monkeypatch.setattr(datasets, "put_block", lambda table: (table, None))  # no Ray: blocks stay tables
    monkeypatch.setattr(datasets, "blocks_dataset", lambda blocks: [table for table, _ in blocks])
    sizes, start, files = (700, 1, 300), 0, []
    for i, n in enumerate(sizes):
        rows = np.arange(start, start + n)
        files.append(str(tmp_path / f"{i}.parquet"))
        pq.write_table(image_table((rows % 251).astype(np.uint8).reshape(n, 1, 1, 1), label=rows), files[-1])
        start += n
    total = sum(sizes)
    shares = PreparedSource(tuple(files)).rank_datasets(world_size)
    for rank, blocks in enumerate(shares):
        labels = np.concatenate([b.column("label").to_numpy() for b in blocks])
        np.testing.assert_array_equal(labels, np.arange(rank, total, world_size)[: total // world_size])
        assert all(len(b) == ROWS_PER_BLOCK for b in blocks[:-1]) and 0 < len(blocks[-1]) <= ROWS_PER_BLOCK
    images = np.arange(7, dtype=np.uint8).reshape(7, 1, 1, 1)
    dealt = [np.concatenate([b.column("index").to_numpy() for b in share])
             for share in ArraySource(images).rank_datasets(world_size)]
    assert {len(d) for d in dealt} == {-(-7 // world_size)}  # padded to equal shares, no image lost
    assert sorted(i for d in dealt for i in d if i != datasets.PAD) == list(range(7))


def test_blocks_put_by_the_driver_make_the_dataset_from_arrow_refs_makes(ray_address, monkeypatch) -> None:
    """Same rows, blocks, row counts and schema as Ray's public ``from_arrow_refs`` (which computes
    the metadata in remote tasks), without submitting a task."""
    import pyarrow as pa
    import ray
    import ray.data
    import ray.remote_function

    def no_task(*args, **kwargs):
        raise AssertionError("a task was submitted")

    ray.init(address=ray_address, logging_level="error")
    try:
        tables = [pa.table({"image": [bytes([i, i])] * n, "label": [i] * n}) for i, n in enumerate((3, 5, 1))]
        with monkeypatch.context() as patched:
            patched.setattr(ray.remote_function.RemoteFunction, "_remote", no_task)
            ours = blocks_dataset([put_block(t) for t in tables])
        theirs = ray.data.from_arrow_refs([ray.put(t) for t in tables])
        assert ours.num_blocks() == theirs.num_blocks() == 3 and ours.count() == theirs.count() == 9
        assert ours.schema() == theirs.schema()
        assert ours.take_all() == theirs.take_all()
    finally:
        ray.shutdown()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["memory", "stream"])
def test_two_workers_twice_give_identical_weights_and_losses(tmp_path, ray_address, mode) -> None:
    runs = []
    for attempt in ("a", "b"):
        project = make_project(tmp_path / attempt, {"data": {"loading": {"mode": mode}}})
        run_stage(project, "train", "--model", "gan", env={"RAY_ADDRESS": ray_address}, tracking="local")
        runs.append(project / "models" / "gan")
    a, b = (read_json(r / "workers.json") for r in runs)
    assert a == b and len(a) == 2 and a[0]["weights"] == a[1]["weights"]
    assert {w["step"] for w in a} == {2 * (512 // 2 // 64)}  # every rank trained on its 256 images
    losses = [[row for row in read_json(r / "history.json") if "epoch" not in row] for r in runs]
    assert losses[0] == losses[1]


LOOK = """\
import json, os, sys, ray
ray.init(address=sys.argv[1], logging_level="error")
look = ray.remote(num_cpus=0, resources={f"node:{sys.argv[2]}": 0.01})(lambda p: sorted(os.listdir(p)))
print(json.dumps(ray.get(look.remote(sys.argv[3]))))
"""


@pytest.mark.slow
def test_a_rank_on_a_second_node_gets_its_share(tmp_path) -> None:
    """Two nodes, one worker each; the second node cannot see the prepared data (an empty tmpfs over
    the folder in its own mount namespace, as on a second machine): the shards are read with
    ``local://`` on the driver's node, the head's, and the other rank trains on its share from the
    object store."""
    project = make_project(tmp_path / "p", {"ray": {"placement_strategy": "SPREAD"}})
    prepared_dir = project / "data" / "prepared"
    with ray_node(tmp_path, num_cpus=1) as head, \
            ray_node(tmp_path, num_cpus=1, head_address=head, node_ip=WORKER_IP, hide=prepared_dir):
        seen = subprocess.run([sys.executable, "-c", LOOK, head, WORKER_IP, str(prepared_dir)], check=True,
                              capture_output=True, text=True, env={**os.environ, "RAY_NODE_IP_ADDRESS": HEAD_IP})
        assert json.loads(seen.stdout.splitlines()[-1]) == [] and any(prepared_dir.iterdir())
        run_stage(project, "train", "--model", "gan", env={"RAY_ADDRESS": head}, tracking="local")
        run_stage(project, "classifier", env={"RAY_ADDRESS": head}, tracking="local")
    workers = read_json(project / "models" / "gan" / "workers.json")
    assert len({w["node"] for w in workers}) == 2 and workers[0]["weights"] == workers[1]["weights"]
    assert {w["step"] for w in workers} == {2 * (512 // 2 // 64)}
    reference = np.load(project / "models" / "classifier" / "reference.npz")
    assert len(reference["test_features"]) == len(reference["train_features"]) == 200  # both ranks' rows, merged
