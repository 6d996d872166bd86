"""fraudops.storage: one code path for a local folder and any fsspec URL, with atomic writes.

Every behaviour test runs three times: on a local folder, on fsspec's in-memory filesystem (``memory://``)
and on S3 (a real S3 API server, moto's, on loopback, through s3fs).
"""

from __future__ import annotations

import datetime as dt
import pickle
import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from fraudops.errors import StorageError
from fraudops.workspace.layout import FOLDERS, TABLE_SUFFIXES
from fraudops.workspace.storage import Storage


@pytest.fixture(params=["local", "memory", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    if request.param == "local":
        yield Storage(str(tmp_path / "ws"))
        return
    if request.param == "s3":
        yield Storage(request.getfixturevalue("s3_bucket") + "/ws")
        return
    url = f"memory://fraudops-test-{uuid.uuid4().hex}/ws"
    s = Storage(url)
    yield s
    if s.fs.exists(s.root):
        s.fs.rm(s.root, recursive=True)


def all_names(s: Storage, rel: str) -> list[str]:
    """Every entry of a folder, hidden ones included (unlike Storage.ls)."""
    if not s.fs.isdir(s.path(rel)):
        return []
    return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in s.fs.ls(s.path(rel), detail=False))


FRAME = pl.DataFrame(
    {
        "TRANSACTION_ID": [3, 1, 2],
        "CUSTOMER_ID": [10, 11, 10],
        "TX_AMOUNT": [1.5, 0.0, 1234.25],
        "NAME": ["a", "b", None],
    }
)


# ---------------------------------------------------------------- construction


def test_local_and_remote_urls(tmp_path: Path) -> None:
    local = Storage(str(tmp_path) + "/")
    assert local.is_local
    assert local.url == str(tmp_path)
    assert local.uri("data/raw/a.csv") == f"{tmp_path}/data/raw/a.csv"
    assert Storage(f"file://{tmp_path}").url == str(tmp_path)
    assert Storage(f"file://{tmp_path}").is_local

    mem = Storage("memory://bucket/prefix/")
    assert not mem.is_local
    assert mem.url == "memory://bucket/prefix"
    assert mem.path("data/raw/") == "/bucket/prefix/data/raw"
    assert mem.uri("data/raw/a.csv").startswith("memory://")
    assert mem.uri("data/raw/a.csv").endswith("/bucket/prefix/data/raw/a.csv")


def test_relative_local_path_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert Storage(".").url == str(tmp_path)
    assert Storage("sub").path("x.csv") == f"{tmp_path}/sub/x.csv"


# ---------------------------------------------------------------- read / write


def test_bytes_text_json_round_trip(storage: Storage) -> None:
    storage.write_bytes("a/b/blob.bin", b"\x00\x01binary\xff")
    assert storage.read_bytes("a/b/blob.bin") == b"\x00\x01binary\xff"
    assert storage.size("a/b/blob.bin") == 9

    storage.write_text("notes.txt", "héllo\nwörld")
    assert storage.read_text("notes.txt") == "héllo\nwörld"

    obj = {"n": 1, "x": [1.5, None], "nested": {"ok": True}}
    storage.write_json("out/decision.json", obj)
    assert storage.read_json("out/decision.json") == obj
    # dates (and anything else json cannot encode) are written as strings
    storage.write_json("out/dated.json", {"day": dt.date(2018, 4, 1)})
    assert storage.read_json("out/dated.json") == {"day": "2018-04-01"}


def test_overwrite_replaces_content(storage: Storage) -> None:
    storage.write_text("x.txt", "first, long content")
    storage.write_text("x.txt", "second")
    assert storage.read_text("x.txt") == "second"
    assert all_names(storage, "") == ["x.txt"]


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".CSV", ".Parquet"])
def test_frame_round_trip(storage: Storage, suffix: str) -> None:
    storage.write_frame(f"data/raw/t{suffix}", FRAME)
    assert_frame_equal(storage.read_frame(f"data/raw/t{suffix}"), FRAME)
    assert_frame_equal(
        storage.read_frame(f"data/raw/t{suffix}", columns=["TX_AMOUNT", "TRANSACTION_ID"]),
        FRAME.select("TX_AMOUNT", "TRANSACTION_ID"),
    )


def test_parquet_keeps_types_csv_keeps_text(storage: Storage) -> None:
    df = pl.DataFrame(
        {"TX_DATETIME": [dt.datetime(2018, 4, 1, 0, 0, 31)], "TX_FRAUD": pl.Series([1], dtype=pl.Int8)}
    )
    storage.write_frame("t.parquet", df)
    assert_frame_equal(storage.read_frame("t.parquet"), df)
    # CSV timestamps stay text: parsing them is validation's job (fraudops.data), not storage's
    storage.write_frame("t.csv", df)
    assert storage.read_frame("t.csv").schema["TX_DATETIME"] == pl.String


def test_unknown_frame_suffix(storage: Storage) -> None:
    with pytest.raises(StorageError, match="unknown file type"):
        storage.write_frame("t.json", FRAME)
    assert not storage.exists("t.json")
    storage.write_text("t.txt", "a,b\n1,2\n")
    with pytest.raises(StorageError, match="unknown file type"):
        storage.read_frame("t.txt")


def test_missing_file(storage: Storage) -> None:
    with pytest.raises(StorageError, match="no such file") as info:
        storage.read_bytes("nope/missing.csv")
    assert "missing.csv" in str(info.value)
    with pytest.raises(StorageError):
        storage.read_frame("missing.parquet")
    assert not storage.exists("nope/missing.csv")


def test_exists_delete(storage: Storage) -> None:
    storage.write_text("d/a.txt", "a")
    storage.write_text("d/sub/b.txt", "b")
    assert storage.exists("d/a.txt")
    storage.delete("d/a.txt")
    assert not storage.exists("d/a.txt")
    storage.delete("d/a.txt")  # deleting what is not there is fine
    storage.delete("d", recursive=True)
    assert not storage.exists("d/sub/b.txt")


# ---------------------------------------------------------------- listing


def test_ls_sorted_skips_hidden_folders_and_filters_suffix(storage: Storage) -> None:
    for name in ["b.parquet", "a.csv", "C.CSV", "notes.txt", ".hidden.csv", ".b.parquet.tmp-1234"]:
        storage.write_bytes(f"data/raw/{name}", b"x")
    storage.write_bytes("data/raw/sub/inner.csv", b"x")
    assert storage.ls("data/raw") == [
        "data/raw/C.CSV",
        "data/raw/a.csv",
        "data/raw/b.parquet",
        "data/raw/notes.txt",
    ]
    assert storage.ls("data/raw/", TABLE_SUFFIXES) == [
        "data/raw/C.CSV",
        "data/raw/a.csv",
        "data/raw/b.parquet",
    ]
    assert storage.ls("/data/raw", (".parquet",)) == ["data/raw/b.parquet"]
    assert storage.ls("data") == []  # folders are not files
    assert storage.ls("does/not/exist") == []


def test_ls_of_root(storage: Storage) -> None:
    storage.write_text("top.txt", "x")
    assert storage.ls("") == ["top.txt"]


# ---------------------------------------------------------------- atomic writes


class Boom(Exception):
    pass


def test_failed_write_leaves_nothing(storage: Storage) -> None:
    with pytest.raises(Boom), storage.open_write("out/result.parquet") as f:
        f.write(b"half of a file")
        raise Boom
    assert not storage.exists("out/result.parquet")
    assert all_names(storage, "out") == []  # no temporary file either


def test_failed_overwrite_keeps_the_old_file(storage: Storage) -> None:
    storage.write_text("out/result.json", '{"ok": true}')
    with pytest.raises(Boom), storage.open_write("out/result.json") as f:
        f.write(b'{"ok": fa')
        raise Boom
    assert storage.read_json("out/result.json") == {"ok": True}
    assert all_names(storage, "out") == ["result.json"]


def test_write_is_invisible_until_complete(storage: Storage) -> None:
    with storage.open_write("data/raw/day.csv") as f:
        f.write(b"a,b\n")
        # under its final name nothing exists yet, and listings skip the temporary file (S3: none, the
        # object is uploaded whole when the block ends)
        assert not storage.exists("data/raw/day.csv")
        assert storage.ls("data/raw") == []
        hidden = all_names(storage, "data/raw")
        assert len(hidden) == (0 if storage.is_s3 else 1)
        assert all(h.startswith(".day.csv.tmp-") for h in hidden)
        f.write(b"1,2\n")
    assert storage.read_bytes("data/raw/day.csv") == b"a,b\n1,2\n"
    assert all_names(storage, "data/raw") == ["day.csv"]


def test_failed_write_frame_leaves_nothing(storage: Storage, monkeypatch: pytest.MonkeyPatch) -> None:
    storage.write_frame("t.parquet", FRAME)

    def broken(self: Storage, rel: str, data: bytes) -> None:
        with self.open_write(rel) as f:
            f.write(data[: len(data) // 2])
            raise Boom

    monkeypatch.setattr(Storage, "write_bytes", broken)
    with pytest.raises(Boom):
        storage.write_frame("t.parquet", FRAME.head(1))
    assert_frame_equal(storage.read_frame("t.parquet"), FRAME)
    assert all_names(storage, "") == ["t.parquet"]


def test_keyboard_interrupt_also_cleans_up(storage: Storage) -> None:
    with pytest.raises(KeyboardInterrupt), storage.open_write("x.bin") as f:
        f.write(b"x")
        raise KeyboardInterrupt
    assert all_names(storage, "") == []


# ---------------------------------------------------------------- layout


def test_layout_is_the_seed_bucket() -> None:
    assert set(FOLDERS) == {
        "data/raw",
        "prod_inputs",
        "prod_outputs/predictions",
        "monitoring_inputs/reference",
        "monitoring_inputs/current_data",
        "monitoring_outputs/drift",
        "monitoring_outputs/metrics",
        "monitoring_outputs/retraining_decision",
        "monitoring_outputs/history",
    }


def test_init_layout(storage: Storage) -> None:
    storage.init_layout()
    for rel in FOLDERS:  # S3 has no folders: a prefix exists once an object is under it
        assert storage.is_s3 or storage.fs.isdir(storage.path(rel)), rel
        assert storage.ls(rel) == []
    storage.write_text("data/raw/keep.txt", "x")
    storage.init_layout()  # idempotent, keeps content
    assert storage.read_text("data/raw/keep.txt") == "x"


def test_memory_url_is_the_same_code_path() -> None:
    """The non-local path: a fresh Storage on the same URL sees what another wrote (shared fsspec store)."""
    url = f"memory://fraudops-test-{uuid.uuid4().hex}"
    try:
        Storage(url).write_frame("data/raw/2018-04-01.parquet", FRAME)
        other = Storage(url + "/")
        assert other.ls("data/raw", TABLE_SUFFIXES) == ["data/raw/2018-04-01.parquet"]
        assert_frame_equal(other.read_frame("data/raw/2018-04-01.parquet"), FRAME)
        fs = fsspec.filesystem("memory")
        assert fs.exists(other.path("data/raw/2018-04-01.parquet"))
    finally:
        fs = fsspec.filesystem("memory")
        root = Storage(url).root
        if fs.exists(root):
            fs.rm(root, recursive=True)


# ---------------------------------------------------------------- S3 for real (moto's S3 API server)


def test_s3_listings_see_other_writers_and_our_deletes(s3_bucket: str) -> None:
    """s3fs caches listings: a listing after another process's write or our delete is never stale."""
    import boto3

    storage = Storage(s3_bucket + "/ws")
    storage.write_text("prod_inputs/a.csv", "x\n1\n")
    assert storage.ls("prod_inputs") == ["prod_inputs/a.csv"]  # listing cached by s3fs now
    bucket = s3_bucket.removeprefix("s3://")
    boto3.client("s3").put_object(Bucket=bucket, Key="ws/prod_inputs/b.csv", Body=b"x\n2\n")
    assert storage.ls("prod_inputs") == ["prod_inputs/a.csv", "prod_inputs/b.csv"]
    assert storage.exists("prod_inputs/b.csv")
    assert storage.read_text("prod_inputs/b.csv") == "x\n2\n"
    boto3.client("s3").put_object(Bucket=bucket, Key="ws/prod_inputs/b.csv", Body=b"x\n22\n")
    assert storage.size("prod_inputs/b.csv") == 5
    assert storage.read_text("prod_inputs/b.csv") == "x\n22\n"
    storage.delete("prod_inputs/a.csv")
    assert storage.ls("prod_inputs") == ["prod_inputs/b.csv"]
    assert not storage.exists("prod_inputs/a.csv")


def test_s3_write_is_one_put_without_temporary_objects(
    s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On S3 a write is one PUT of the whole object under its final key: no temporary copy, no rename."""
    storage = Storage(s3_bucket + "/ws")
    calls: list[tuple[str, object]] = []
    real = storage.fs.call_s3

    def counting(method: str, *args: object, **kwargs: object) -> object:
        calls.append((method, kwargs.get("Key")))
        return real(method, *args, **kwargs)

    monkeypatch.setattr(storage.fs, "call_s3", counting)
    storage.write_frame("data/raw/t.parquet", FRAME)
    assert calls == [("put_object", "ws/data/raw/t.parquet")]
    assert_frame_equal(storage.read_frame("data/raw/t.parquet"), FRAME)


def test_s3_endpoint_from_the_setting(s3_env: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """storage.endpoint_url (FRAUDOPS_STORAGE__ENDPOINT_URL) points s3fs and boto3 at an S3-compatible
    server when the AWS variables do not."""
    import boto3
    import s3fs

    endpoint = str(s3_env.endpoint)
    bucket = f"t-{uuid.uuid4().hex[:20]}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    s3fs.S3FileSystem.clear_instance_cache()
    monkeypatch.setenv("FRAUDOPS_STORAGE__ENDPOINT_URL", endpoint)
    storage = Storage(f"s3://{bucket}/ws")
    assert storage.endpoint_url == endpoint
    storage.write_text("a.txt", "hello")
    assert storage.put_if_absent("lock.json", b"{}") is not None
    assert Storage(f"s3://{bucket}/ws").read_text("a.txt") == "hello"
    monkeypatch.delenv("FRAUDOPS_STORAGE__ENDPOINT_URL")
    explicit = Storage(f"s3://{bucket}/ws", endpoint_url=endpoint)
    assert explicit.read_text("a.txt") == "hello"


def test_staged_is_a_local_copy_removed_after(storage: Storage) -> None:
    """Batch scoring reads a staged local file: the bytes of the object, gone once the block ends (on
    a local workspace the file itself, never a copy)."""
    data = bytes(range(256)) * 4096
    storage.write_bytes("prod_inputs/big.parquet", data)
    with storage.staged("prod_inputs/big.parquet") as local:
        assert Path(local).read_bytes() == data
        assert (local == storage.path("prod_inputs/big.parquet")) == storage.is_local
    assert Path(local).exists() == storage.is_local
    with pytest.raises(StorageError, match="no such file"), storage.staged("prod_inputs/none.parquet"):
        pass


def test_a_storage_sent_to_another_process_reopens_its_workspace(storage: Storage) -> None:
    """Dask pickles the storage into worker tasks: it travels as its URL and endpoint, never with a live
    S3 client (which cannot be pickled), and the copy reads and writes the same workspace."""
    if storage.is_s3:
        storage.put_if_absent("lock.json", b"held")  # creates the storage's boto client
    else:
        storage.write_bytes("lock.json", b"held")
    clone = pickle.loads(pickle.dumps(storage))
    assert repr(clone) == repr(storage) and clone.endpoint_url == storage.endpoint_url
    assert clone.read_bytes("lock.json") == b"held"
    clone.write_text("from-worker.txt", "x")
    assert storage.read_text("from-worker.txt") == "x"
