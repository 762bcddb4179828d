"""artefact_size: the gzip size the gate's size checks read depends on the files' names and bytes only."""
import os

import pytest

from shoprank.scoring.backends import artefact_size


def test_owner_mode_and_time_do_not_change_the_size(tmp_path):
    dirs = [tmp_path / "host", tmp_path / "container"]
    for d in dirs:
        (d / "towers").mkdir(parents=True)
        (d / "towers" / "head.npz").write_bytes(b"\x00weights" * 50)
        (d / "model.json").write_text('{"a": 1}')
    if os.geteuid() != 0:
        pytest.skip("chown needs root")  # CI runs as root
    for f in (dirs[1] / "towers" / "head.npz", dirs[1] / "model.json"):
        os.chown(f, 1000, 1000)
        os.chmod(f, 0o600)
        os.utime(f, (1e9, 1e9))
    assert artefact_size(dirs[0]) == artefact_size(dirs[1])
    (dirs[1] / "model.json").write_text('{"a": 2, "b": [1, 2, 3]}')
    assert artefact_size(dirs[0]) != artefact_size(dirs[1])
