import json
import os
import stat

import pytest

from scripts.atomic import atomic_path, write_json


def test_write_json_round_trip_and_permissions(tmp_path):
    path = tmp_path / "sub" / "list.json"
    write_json({"a": [1, 2]}, path)
    assert json.loads(path.read_text()) == {"a": [1, 2]}
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert os.listdir(path.parent) == ["list.json"]  # no temporary file left


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "model.pt"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(path, ".pt") as tmp:
            with open(tmp, "w") as f:
                f.write("half")
            raise RuntimeError("writer failed")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["model.pt"]


def test_temporary_keeps_the_suffix_and_lives_beside_the_target(tmp_path):
    with atomic_path(tmp_path / "vol.nii", ".nii") as tmp:
        assert tmp.endswith(".nii") and os.path.dirname(tmp) == str(tmp_path)
        open(tmp, "w").close()
    assert os.path.exists(tmp_path / "vol.nii")
