import json

import pytest

from core import records
from core.errors import RecordError
from core.files import atomic_path, atomic_write


def _record(**over):
    kw = {"model": {"name": "m", "checkpoint_sha256": "a" * 64}, "data": {"name": "d", "split": "test", "size": 3},
          "config": {"method": "fp32", "w_bits": None, "a_bits": None}, "metrics": {"top1": 0.5}, "seed": 0}
    kw.update(over)
    return records.make_record("eval", **kw)


def test_record_has_every_required_field():
    r = _record()
    for key in ("schema", "kind", "created", "git_commit", "versions", "seed", "model", "data", "config",
                "metrics", "host"):
        assert key in r
    assert r["schema"] == records.SCHEMA_ID
    assert set(r["versions"]) >= {"python", "torch", "timm", "tvm", "numpy"} and r["versions"]["torch"]
    assert r["host"]["cores"] >= 1


@pytest.mark.parametrize(
    "mutate, where",
    [
        (lambda r: r.pop("seed"), "'seed' is a required property"),
        (lambda r: r.update(kind="dance"), "kind"),
        (lambda r: r["model"].update(checkpoint_sha256="xyz"), "model/checkpoint_sha256"),
        (lambda r: r["data"].update(size=-1), "data/size"),
        (lambda r: r["config"].update(w_bits=1), "config/w_bits"),
        (lambda r: r.update(created="yesterday"), "created"),
        (lambda r: r.update(schema="pfcr.record/0"), "schema"),
    ],
)
def test_schema_rejects(mutate, where):
    r = _record()
    mutate(r)
    with pytest.raises(RecordError, match=where):
        records.validate(r)


def test_write_and_read(tmp_path):
    r = _record(config={"method": "pfcr", "w_bits": 4, "a_bits": 4})
    path = records.write_record(r, tmp_path)
    assert path.name == "eval_m_d_test_pfcr_w4a4_seed0.json"
    back = records.read_records(tmp_path)
    assert len(back) == 1 and back[0]["metrics"] == {"top1": 0.5} and back[0]["_path"] == str(path)


def test_read_rejects_broken_files(tmp_path):
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(RecordError, match=r"x\.json"):
        records.read_records(tmp_path)


def test_results_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("PFCR_RESULTS", str(tmp_path))
    assert records.results_dir() == tmp_path
    assert records.results_dir("elsewhere").name == "elsewhere"


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = atomic_write(tmp_path / "r.json", json.dumps({"v": 1}))
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text('{"v": 2, "half')
        raise RuntimeError("writer crashed")
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_atomic_write_gives_normal_permissions(tmp_path):
    import os

    mask = os.umask(0o022)
    try:
        path = atomic_write(tmp_path / "r.json", "{}")
    finally:
        os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o644


def test_safetensors_written_atomically_get_normal_permissions(tmp_path):
    """safetensors replaces the temporary file with a 0600 one of its own: quantized models and
    programs were written 0600 until the mode was set after the writer."""
    import os

    import numpy as np
    from safetensors.numpy import save_file

    mask = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "m.safetensors") as tmp:
            save_file({"w": np.zeros(3)}, str(tmp))
    finally:
        os.umask(mask)
    assert (tmp_path / "m.safetensors").stat().st_mode & 0o777 == 0o644


def test_read_records_names_a_damaged_record_and_warns_of_a_schemaless_one(tmp_path, capsys):
    """A string top1 or non-UTF-8 bytes are a RecordError naming the file (they were tracebacks inside
    the report); a file that looks like a record but has no schema key is skipped with a warning."""
    path = records.write_record(_record(), tmp_path)
    good = json.loads(path.read_text())
    (tmp_path / "string_top1.json").write_text(json.dumps({**good, "metrics": {"top1": "high"}}))
    with pytest.raises(records.RecordError, match=r"string_top1.json.*metrics/top1"):
        records.read_records(tmp_path)
    (tmp_path / "string_top1.json").unlink()
    (tmp_path / "bytes.json").write_bytes(b'{"schema": "pfcr.record/1", "x": "\xff"}')
    with pytest.raises(records.RecordError, match=r"bytes\.json is not UTF-8"):
        records.read_records(tmp_path)
    (tmp_path / "bytes.json").unlink()
    (tmp_path / "no_schema.json").write_text(json.dumps({k: v for k, v in good.items() if k != "schema"}))
    assert len(records.read_records(tmp_path)) == 1
    assert "no_schema.json looks like a result record" in capsys.readouterr().err
