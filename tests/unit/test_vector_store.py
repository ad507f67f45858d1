"""The vector store's record of which runtime made each vector, on real Parquet chunks in a temporary folder."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from resources.images.image_store import ImageStore
from resources.vectors.vector_store import VectorStore, chunk_schema

DIM = 4


def _stored(tmp_path, ids):
    images = ImageStore(tmp_path / "images")
    for photo_id in ids:
        path = images.path_for(photo_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"jpeg")
    return images


def _vectors(n):
    vectors = np.eye(n, DIM, dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_only_vectors_of_refused_runtimes_are_planned_again(tmp_path):
    store = VectorStore(tmp_path / "embeddings", "model")
    images = _stored(tmp_path, ["a", "b", "c"])
    for photo_id, runtime, vector in zip(
        "abc", [("torch", "bf16"), ("openvino", "int8"), ("onnx", "int8")], _vectors(3)
    ):
        writer = store.writer(DIM, runtime)
        stat = images.path_for(photo_id).stat()
        writer.add("b00", photo_id, vector, stat.st_size, stat.st_mtime_ns)
        writer.flush()
    accepted = {("openvino", "int8")}
    plan = store.plan_encoding("b00", images, list("abc"), accepts=lambda by: by[0] == "torch" or by in accepted)
    assert [item[0] for item in plan.todo] == ["c"] and plan.other_runtime == 1
    assert store.plan_encoding("b00", images, list("abc")).todo == []


def test_chunks_from_before_the_runtime_columns_read_as_pytorch_and_compact_into_the_new_schema(tmp_path):
    store = VectorStore(tmp_path / "embeddings", "model")
    images = _stored(tmp_path, ["a", "b"])
    stats = [images.path_for(p).stat() for p in "ab"]
    old_schema = pa.schema([f for f in chunk_schema(DIM) if f.name not in ("runtime", "precision", "model_hash")])
    old = pa.table(
        [
            pa.array(["a", "b"]),
            pa.FixedSizeListArray.from_arrays(pa.array(_vectors(2).reshape(-1)), DIM),
            pa.array(["model", "model"]),
            pa.array([s.st_size for s in stats], pa.int64()),
            pa.array([s.st_mtime_ns for s in stats], pa.int64()),
        ],
        schema=old_schema,
    )
    store.bucket_dir("b00").mkdir(parents=True)
    pq.write_table(old, store.bucket_dir("b00") / "part-000000.parquet")
    writer = store.writer(DIM, ("openvino", "int8"))
    writer.add("b00", "b", _vectors(2)[1], stats[1].st_size, stats[1].st_mtime_ns)
    writer.flush()

    only_torch = store.plan_encoding("b00", images, ["a", "b"], accepts=lambda by: by[0] == "torch")
    assert [item[0] for item in only_torch.todo] == ["b"]
    assert store.compact("b00", {"a", "b"}, DIM) == 2
    table = store.read_bucket("b00")
    assert table.schema == chunk_schema(DIM)
    assert dict(
        zip(table["photo_id"].to_pylist(), zip(table["runtime"].to_pylist(), table["precision"].to_pylist()))
    ) == {
        "a": ("torch", ""),
        "b": ("openvino", "int8"),
    }
