"""The fetch stage reading ``s3://bucket/prefix`` from a real S3 server (SeaweedFS, see conftest)."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
import pytest

from components.config import DataConfig
from components.data.dataset import load_split
from components.data.fetch import IDX_FILES, FetchError, fetch
from components.data.idx import idx_bytes

pytestmark = pytest.mark.slow

BUCKET = "fetch-tests"


def tiny_splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{split: (images (N, 28, 28) uint8, labels (N,) uint8)}`` with balanced labels."""
    rng = np.random.default_rng(7)
    return {
        split: (rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), (np.arange(n) % 10).astype(np.uint8))
        for split, n in (("train", 30), ("test", 20))
    }


@pytest.fixture
def s3_env(s3_server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Point boto3 at the test server through the environment only, isolated from ~/.aws."""
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    s3_server.make_bucket(BUCKET)
    return s3_server


def upload_idx(client, prefix: str, splits: dict) -> None:
    """Upload the four IDX files: train gzipped, test raw (both forms are accepted)."""
    for split, (images_name, labels_name) in IDX_FILES.items():
        for name, array in ((images_name, splits[split][0]), (labels_name, splits[split][1])):
            payload = idx_bytes(array)
            if split == "train":
                name, payload = f"{name}.gz", gzip.compress(payload)
            client.put_object(Bucket=BUCKET, Key=f"{prefix}/{name}", Body=payload)


def test_fetch_idx_from_s3(s3_env, tmp_path: Path) -> None:
    splits = tiny_splits()
    upload_idx(s3_env.client(), "sets/tiny", splits)
    uri = f"s3://{BUCKET}/sets/tiny"
    meta = fetch(DataConfig(source=uri, train_subset=20), tmp_path / "out")
    assert meta["name"] == "s3-tiny" and meta["mirror"] == uri
    assert meta["counts"] == {"train": 20, "test": 20} and meta["class_counts"]["train"] == [2] * 10
    assert set(meta["raw_sha256"]) == {name for pair in IDX_FILES.values() for name in pair}
    test = load_split(tmp_path / "out", "test")
    np.testing.assert_array_equal(test.images[:, 0], splits["test"][0])
    np.testing.assert_array_equal(test.labels, splits["test"][1])


def test_fetch_npz_from_s3_with_endpoint_from_config(s3_env, tmp_path: Path, monkeypatch) -> None:
    splits = tiny_splits()
    client = s3_env.client()
    for split, (images, labels) in splits.items():
        buffer = io.BytesIO()
        np.savez(buffer, images=images[:, None], labels=labels.astype(np.int64))
        client.put_object(Bucket=BUCKET, Key=f"npz/{split}.npz", Body=buffer.getvalue())
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    cfg = DataConfig(source=f"s3://{BUCKET}/npz/", s3_endpoint_url=s3_env.endpoint_url, image_size=32)
    meta = fetch(cfg, tmp_path / "out")
    assert meta["shape"] == [1, 32, 32] and meta["counts"] == {"train": 30, "test": 20}
    train = load_split(tmp_path / "out", "train")
    np.testing.assert_array_equal(train.images[:, 0, 2:30, 2:30], splits["train"][0])


def test_s3_errors_are_one_line_and_say_what_to_do(s3_env, tmp_path: Path, monkeypatch) -> None:
    upload_idx(s3_env.client(), "sets/tiny", tiny_splits())
    out = tmp_path / "out"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    with pytest.raises(FetchError) as info:
        fetch(DataConfig(source=f"s3://{BUCKET}/sets/tiny"), out)
    message = str(info.value)
    assert message.startswith(f"s3://{BUCKET}/sets/tiny:") and "credentials" in message and "\n" not in message
    assert "AWS_SECRET_ACCESS_KEY" in message

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_env.secret_key)
    with pytest.raises(FetchError, match="no-such-bucket.*NoSuchBucket"):
        fetch(DataConfig(source="s3://no-such-bucket/x"), out)
    with pytest.raises(FetchError, match="empty-prefix: no images: lay it out as"):
        fetch(DataConfig(source=f"s3://{BUCKET}/empty-prefix"), out)

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on port 9
    with pytest.raises(FetchError, match="cannot reach S3 endpoint http://127.0.0.1:9"):
        fetch(DataConfig(source=f"s3://{BUCKET}/sets/tiny"), out)
    assert not out.exists()


def test_image_folder_on_s3_gives_the_same_shards_as_on_disk(s3_env, tmp_path: Path) -> None:
    from test_image_folder import write_folder

    local = tmp_path / "images"
    write_folder(local)
    client = s3_env.client()
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        client.put_object(Bucket=BUCKET, Key=f"folders/pets/{path.relative_to(local).as_posix()}", Body=path.read_bytes())
    client.put_object(Bucket=BUCKET, Key="folders/pets/empty/", Body=b"")  # a console-made "folder"
    settings = {"channels": 3, "image_size": 32, "skip_unreadable": True, "seed": 5}
    on_disk = fetch(DataConfig(source=str(local), **settings), tmp_path / "disk")
    on_s3 = fetch(DataConfig(source=f"s3://{BUCKET}/folders/pets", **settings), tmp_path / "s3")
    assert on_s3["prepared_sha256"] == on_disk["prepared_sha256"] and on_s3["raw_sha256"] == on_disk["raw_sha256"]
    assert on_s3["class_names"] == ["bird", "cat", "dog"] and on_s3["empty_class_folders"] == ["empty"]
    assert on_s3["skipped_files"] == [f"s3://{BUCKET}/folders/pets/dog/broken.png"] and on_s3["name"] == "s3-pets"
    for name in on_disk["prepared_sha256"]:
        assert (tmp_path / "s3" / name).read_bytes() == (tmp_path / "disk" / name).read_bytes()
    with pytest.raises(FetchError, match=r"folders/pets/dog/broken.png: cannot decode"):
        fetch(DataConfig(source=f"s3://{BUCKET}/folders/pets", channels=3), tmp_path / "bad")
