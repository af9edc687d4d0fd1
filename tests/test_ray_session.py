"""RaySession's resume path: every worker reads its own copy of a remote checkpoint.

Ray's ``Checkpoint.as_directory`` shares one temporary folder between the workers of a node and
deletes it when the last reader it knows of leaves; a worker that arrives during that deletion
fails with "Checkpoint directory ... does not exist" (seen in CI, 2 workers resuming from S3).
"""

from __future__ import annotations

import types
from pathlib import Path

import pyarrow.fs

from components.distributed.session import RaySession

# Ray is imported inside the tests, as everywhere in tests/: importing it at collection time, before
# conftest's ray_token fixture sets RAY_AUTH_MODE, fixes this process' auth mode to 'disabled' and
# a later in-process ray.init() to a token cluster fails (seen in CI).


def session_resuming_from(checkpoint: object) -> RaySession:
    session = object.__new__(RaySession)  # no Ray worker context needed for the checkpoint path
    session._train = types.SimpleNamespace(get_checkpoint=lambda: checkpoint)
    return session


def test_overlapping_readers_of_a_remote_checkpoint_get_private_copies(tmp_path: Path) -> None:
    import ray.train as ray_train

    store = tmp_path / "store"
    (store / "checkpoint_000001").mkdir(parents=True)
    (store / "checkpoint_000001" / "checkpoint.pt").write_bytes(b"weights")
    # A SubTreeFileSystem is not a LocalFileSystem, so Ray treats it like S3: it must download.
    remote = pyarrow.fs.SubTreeFileSystem(str(store), pyarrow.fs.LocalFileSystem())
    session = session_resuming_from(ray_train.Checkpoint("checkpoint_000001", filesystem=remote))

    first = session.latest_checkpoint()
    folder_a = first.__enter__()
    with session.latest_checkpoint() as folder_b:
        assert folder_a != folder_b
        first.__exit__(None, None, None)  # the first reader leaves while the second still reads
        assert not folder_a.exists()
        assert (folder_b / "checkpoint.pt").read_bytes() == b"weights"
    assert not folder_b.exists()
    assert (store / "checkpoint_000001" / "checkpoint.pt").read_bytes() == b"weights"  # the stored one is untouched


def test_a_local_checkpoint_is_read_in_place(tmp_path: Path) -> None:
    import ray.train as ray_train

    (tmp_path / "checkpoint.pt").write_bytes(b"weights")
    session = session_resuming_from(ray_train.Checkpoint.from_directory(str(tmp_path)))
    with session.latest_checkpoint() as folder:
        assert folder == tmp_path
    assert (tmp_path / "checkpoint.pt").read_bytes() == b"weights"  # read in place, not deleted on exit


def test_results_travel_as_the_runs_last_checkpoint(tmp_path: Path) -> None:
    """``send_results`` is the one way every worker's files reach the driver: Ray Train's checkpoint."""
    import ray.train as ray_train

    reported = []
    session = object.__new__(RaySession)
    session._train = types.SimpleNamespace(Checkpoint=ray_train.Checkpoint,
                                           report=lambda metrics, checkpoint: reported.append((metrics, checkpoint)))
    session.send_results(tmp_path)
    ((metrics, checkpoint),) = reported
    assert metrics == {} and checkpoint.path == str(tmp_path)
