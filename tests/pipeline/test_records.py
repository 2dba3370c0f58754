"""Stage records: a stage counts as done only with its record, the same inputs and intact outputs."""

from __future__ import annotations

from brainmap.io.atomic import atomic_write
from brainmap.pipeline.run.records import StageRecord, fingerprint, remove_stale_temporaries, stage_is_done


def _finish(folder, stage, inputs, params):
    out = folder / f"{stage}.out"
    with atomic_write(out) as fh:
        fh.write(b"result " + stage.encode())
    record = StageRecord(stage, fingerprint(inputs, params), StageRecord.describe_outputs(folder, [out]))
    record.write(folder)
    return out


def test_done_only_with_same_inputs_and_intact_outputs(tmp_path):
    source = tmp_path / "input.bin"
    source.write_bytes(b"abc")
    params = {"threshold": 2.5}
    assert not stage_is_done(tmp_path, "detect", fingerprint([source], params))
    out = _finish(tmp_path, "detect", [source], params)
    assert stage_is_done(tmp_path, "detect", fingerprint([source], params))
    # Changed parameters or inputs: redo.
    assert not stage_is_done(tmp_path, "detect", fingerprint([source], {"threshold": 3.0}))
    source.write_bytes(b"abd")
    assert not stage_is_done(tmp_path, "detect", fingerprint([source], params))
    source.write_bytes(b"abc")
    # A damaged output of the same size, or a missing one: redo.
    out.write_bytes(b"RESULT detect")
    assert not stage_is_done(tmp_path, "detect", fingerprint([source], params))
    out.unlink()
    assert not stage_is_done(tmp_path, "detect", fingerprint([source], params))


def test_unreadable_record_is_not_done_and_temporaries_are_swept(tmp_path):
    StageRecord.path_for(tmp_path, "grid").write_text("{ half a rec")
    assert StageRecord.read(tmp_path, "grid") is None
    assert not stage_is_done(tmp_path, "grid", fingerprint([], {}))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / ".energy.nrrd.a1b2c3.tmp").write_bytes(b"partial")
    (tmp_path / "keep.nrrd").write_bytes(b"x")
    assert remove_stale_temporaries(tmp_path) == 1
    assert (tmp_path / "keep.nrrd").exists()
