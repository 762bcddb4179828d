"""The towers' files are a function of the weights only: the bundle version hashes them (tested here without
TensorFlow: `write_npz` is plain numpy and zipfile)."""
import time
import zipfile

import numpy as np

from shoprank.modeling.towers import write_npz


def test_npz_bytes_do_not_depend_on_the_clock(tmp_path, monkeypatch):
    arrays = {"w_score": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.float32(0.5)}
    write_npz(tmp_path / "a.npz", arrays)
    later = time.time() + 3600
    monkeypatch.setattr(time, "time", lambda: later)
    monkeypatch.setattr(time, "localtime", lambda *a: time.gmtime(later))
    write_npz(tmp_path / "b.npz", dict(reversed(list(arrays.items()))))
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    # np.savez, for contrast, stamps entries with the clock (the bug this guards against).
    with zipfile.ZipFile(tmp_path / "a.npz") as z:
        assert {i.date_time for i in z.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    with np.load(tmp_path / "a.npz") as z:
        assert set(z.files) == {"w_score", "b"}
        np.testing.assert_array_equal(z["w_score"], arrays["w_score"])
        assert z["b"].dtype == np.float32 and float(z["b"]) == 0.5
