"""Upload records: the codec and the ``uploads`` loader (the collector: tests/trainer/test_collect.py)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest

from edge_agent.contract.errors import AgentError, UploadError
from edge_agent.contract.recordings import DataFormatError, load
from edge_agent.contract.upload_record import decode_record, encode_record


def make(
    seq: int = 10, *, device: str = "gw-01", score: float = 0.1, state: str = "normal",
    n: int = 16, channels: tuple[str, ...] = ("x", "y", "z"), time_end: str | None = None,
) -> tuple[bytes, np.ndarray]:
    """An encoded record and its (n, C) float32 samples."""
    samples = np.random.default_rng(seq).normal(size=(n, len(channels))).astype(np.float32)
    payload = encode_record(
        device=device, model_id="ims-lstm", model_version="3", seq_end=seq,
        time_end=time_end or f"2024-05-01T12:00:{seq:02d}+02:00", sample_rate=1000.0,
        channels=list(channels), score=score, threshold=0.5, state=state, samples=samples,
    )
    return payload, samples


def mutate(payload: bytes, **changes: object) -> bytes:
    obj = json.loads(payload)
    for k, v in changes.items():
        if v is KeyError:
            del obj[k]
        else:
            obj[k] = v
    return json.dumps(obj).encode()


def test_round_trip() -> None:
    payload, samples = make()
    obj = json.loads(payload)
    assert (obj["schema"], obj["shape"], obj["dtype"], obj["units"], obj["kind"]) == (3, [16, 3], "float32", "g", "normal")
    assert len(obj["id"]) == 32 and obj["gateway"] is None and obj["answer"] is None and obj["group"] is None
    assert base64.b64decode(obj["data_b64"]) == samples.astype("<f4").tobytes()
    rec = decode_record(payload)
    np.testing.assert_array_equal(rec.samples, samples)
    assert rec.samples.dtype == np.float32 and not rec.samples.flags.writeable
    assert (rec.device, rec.seq_end, rec.channels, rec.state) == ("gw-01", 10, ("x", "y", "z"), "normal")
    assert rec.healthy and str(rec.time_end_utc()) == "2024-05-01 10:00:10"
    assert rec.encode() == payload


@pytest.mark.parametrize(("bad", "msg"), [
    (b"{not json", "not valid UTF-8 JSON"),
    (b"[1, 2]", "expected a JSON object"),
    ({"score": KeyError}, "missing keys ['score']"),
    ({"extra": 1}, "unknown keys ['extra']"),
    ({"data_b64": "@@@@"}, "not valid base64"),
    ({"shape": [17, 3]}, "bytes, shape [17, 3]"),
    ({"shape": [16, 2]}, "does not fit 3 channels"),
    ({"state": "broken"}, "state 'broken'"),
    ({"schema": 4}, "schema 4"),
    ({"schema": True}, "schema True"),
    ({"kind": "spare"}, "kind 'spare'"),
    ({"id": "a b"}, "id 'a b'"),
    ({"id": KeyError}, "missing keys ['id']"),
    ({"gateway": ""}, "invalid gateway id ''"),
    ({"dtype": "float64"}, "dtype 'float64'"),
    ({"seq_end": "10"}, "'seq_end' has type str"),
    ({"time_end": "yesterday"}, "not ISO-8601"),
    ({"sample_rate": 0}, "sample_rate 0 Hz is outside"),
])
def test_decode_rejects(bad: object, msg: str) -> None:
    payload, _ = make()
    data = bad if isinstance(bad, bytes) else mutate(payload, **bad)
    with pytest.raises(UploadError) as info:
        decode_record(data)
    assert msg in str(info.value)
    assert isinstance(info.value, AgentError)


def test_schema_1_records_still_decode() -> None:
    payload, samples = make()
    obj = json.loads(payload)
    for key in ("id", "kind", "gateway", "alert_ref", "answer", "group"):
        del obj[key]
    obj["schema"] = 1
    old = json.dumps(obj).encode()
    rec = decode_record(old)
    np.testing.assert_array_equal(rec.samples, samples)
    assert rec.schema == 1 and rec.kind == "normal" and rec.id.startswith("s1-")
    assert decode_record(old).id == rec.id, "a schema-1 record collected twice keeps one id"
    obj["score"] = None
    with pytest.raises(UploadError, match="'score' has type NoneType"):
        decode_record(json.dumps(obj))
    assert decode_record(rec.encode()).id == rec.id, "re-encoded as schema 3 with the same id"


def test_optional_scores_and_kinds() -> None:
    payload, _ = make(state="critical", score=0.9)
    rec = decode_record(payload)
    assert rec.kind == "alert" and not rec.healthy
    calib = decode_record(mutate(payload, kind="calibration", state="normal", threshold=None, score=0.2))
    assert calib.threshold is None and calib.healthy, "calibration windows are healthy data"
    assert not decode_record(mutate(payload, kind="alert", state="normal", score=0.1)).healthy
    with pytest.raises(UploadError, match="bytes is more than"):
        decode_record(b" " * (32 * 1024 * 1024 + 1))


def test_nan_rejected_both_ways() -> None:
    payload, samples = make()
    nan_data = samples.copy()
    nan_data[3, 1] = np.nan
    obj = json.loads(payload)
    obj["data_b64"] = base64.b64encode(nan_data.astype("<f4").tobytes()).decode()
    with pytest.raises(UploadError, match="NaN or inf"):
        decode_record(json.dumps(obj))
    with pytest.raises(UploadError, match="must be finite"):
        decode_record(payload.replace(b'"score":0.1', b'"score":NaN'))
    with pytest.raises(UploadError, match="NaN or inf"):
        encode_record(device="d", model_id="m", model_version="1", seq_end=1, time_end="2024-01-01T00:00:00",
                      sample_rate=1.0, channels=["x", "y", "z"], score=0.0, threshold=1.0, state="normal",
                      samples=nan_data)
    with pytest.raises(UploadError, match=r"samples must be \(n>0, 2\)"):
        encode_record(device="d", model_id="m", model_version="1", seq_end=1, time_end="2024-01-01T00:00:00",
                      sample_rate=1.0, channels=["x", "y"], score=0.0, threshold=1.0, state="normal",
                      samples=samples)


def _write_jsonl(path: Path, payloads: list[bytes]) -> None:
    path.write_bytes(b"".join(p + b"\n" for p in payloads))


def test_uploads_loader_and_healthy_only(tmp_path: Path) -> None:
    recs = [make(3, score=0.1), make(1, score=0.2), make(2, score=0.9, state="warning"),
            make(4, score=0.6, state="normal"), make(5, score=0.3, state="critical")]
    _write_jsonl(tmp_path / "gw-01.jsonl", [p for p, _ in recs])
    rec = load(tmp_path)
    assert rec.format == "uploads" and rec.channels == ("x", "y", "z") and rec.sample_rate == 1000.0
    assert len(rec.segments) == 5 and rec.units == "g"
    # ordered by time_end: seq 1, 2, 3, 4, 5
    np.testing.assert_array_equal(rec.segments[0].data, recs[1][1])
    # start = time_end - 15 samples at 1 kHz, in UTC
    assert str(rec.segments[0].start) == "2024-05-01T10:00:00.985"
    healthy = load(tmp_path / "gw-01.jsonl", healthy_only=True)
    assert len(healthy.segments) == 2  # seq 1 and 3: score < threshold and state normal
    np.testing.assert_array_equal(healthy.segments[1].data, recs[0][1])


def test_a_record_collected_twice_is_loaded_once(tmp_path: Path) -> None:
    """QoS 1 redelivery can make the collector write a record twice; training must not see it twice."""
    recs = [make(1), make(2), make(3)]
    _write_jsonl(tmp_path / "gw-01.jsonl", [recs[0][0], recs[1][0], recs[1][0], recs[2][0]])
    rec = load(tmp_path)
    assert len(rec.segments) == 3
    for seg, (_, samples) in zip(rec.segments, recs, strict=True):
        np.testing.assert_array_equal(seg.data, samples)


def test_any_agent_device_id_becomes_a_safe_partition_folder(tmp_path: Path) -> None:
    from trainer.dataset import partition_dir

    def name(device: str) -> str:
        return partition_dir(tmp_path, device, "2026-11-22").relative_to(tmp_path).as_posix()

    assert name("gw-01") == "device=gw-01/date=2026-11-22"
    assert name("pump 7 (hall B)") == "device=pump%207%20%28hall%20B%29/date=2026-11-22"
    assert name("..") == "device=../date=2026-11-22" and name("a\\b") == "device=a%5Cb/date=2026-11-22"
    assert partition_dir(tmp_path, "..", "d").resolve().parent.parent == tmp_path.resolve()


def test_uploads_loader_errors(tmp_path: Path) -> None:
    good, _ = make(1)
    other, _ = make(2, channels=("a", "b", "c"))
    _write_jsonl(tmp_path / "mixed.jsonl", [good, other])
    with pytest.raises(DataFormatError, match=r"mixed\.jsonl:2: record channels"):
        load(tmp_path / "mixed.jsonl")
    bad = Path(__file__).resolve().parents[1] / "fixtures/data/malformed/uploads_bad_base64.jsonl"
    kept = load(bad, skip_invalid=True)
    assert len(kept.segments) == 2
