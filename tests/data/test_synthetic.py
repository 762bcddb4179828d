
import numpy as np
import pyarrow.parquet as pq

from shoprank.config import resolve_config
from shoprank.data.synthetic import generate
from shoprank.evaluation.metrics import roc_auc
from shoprank.schema import EVENTS, IMPRESSIONS
from tests.conftest import quiet


def _read(d, name):
    return pq.read_table(d / f"{name}.parquet")


def test_generator_is_deterministic(tmp_path, tiny_config):
    a, b = tmp_path / "a", tmp_path / "b"
    generate(tiny_config.data, a, progress=quiet)
    generate(tiny_config.data, b, progress=quiet)
    for name in ("catalogue", "events", "impressions"):
        assert _read(a, name).equals(_read(b, name)), name


def test_seed_changes_the_data(tmp_path, tiny_config, tiny_raw):
    other = tiny_config.data.model_copy(update={"seed": tiny_config.data.seed + 1})
    generate(other, tmp_path, progress=quiet)
    assert not _read(tmp_path, "impressions").equals(_read(tiny_raw, "impressions"))


def test_tables_follow_schema_and_scale(tiny_raw, tiny_config):
    imps = _read(tiny_raw, "impressions")
    assert imps.schema.names == IMPRESSIONS.names
    assert _read(tiny_raw, "events").schema.names == EVENTS.names
    n = tiny_config.data.n_impressions
    assert 0.7 * n < imps.num_rows < 1.3 * n
    # Several row groups: the writer streams chunks instead of holding everything.
    assert pq.ParquetFile(tiny_raw / "impressions.parquet").num_row_groups > 1


def test_oracle_beats_chance_and_clicks_follow_position_bias(tiny_raw):
    df = _read(tiny_raw, "impressions").to_pandas()
    assert roc_auc(df["clicked"].to_numpy(), df["oracle"].to_numpy()) > 0.7
    # The injected defects include position -1: leave them out, or they sort first and decide the comparison.
    shown = df[df["position"] >= 0]
    ctr = shown.groupby("position")["clicked"].mean()
    assert ctr.index[0] == 0 and len(ctr) == shown["position"].max() + 1
    assert ctr.iloc[0] > 2 * ctr.iloc[-1]  # the top slot is examined far more often than the last
    assert ctr.iloc[:3].mean() > ctr.iloc[-3:].mean()
    assert (df["purchased"] <= df["carted"]).all() and (df["carted"] <= df["clicked"]).all()


def test_injected_defects_are_present(tiny_raw):
    df = _read(tiny_raw, "impressions").to_pandas()
    assert (df["item_id"] == "i_unknown").any() or df["user_id"].isna().any() or (df["position"] < 0).any()
    cat = _read(tiny_raw, "catalogue").to_pandas()
    assert (cat["price"] < 0).any() and cat["item_id"].duplicated().any()


def test_scale_parameter_grows_the_data():
    small, default = resolve_config("small").data, resolve_config("default").data
    assert default.n_requests == 10 * small.n_requests
    assert default.n_users > small.n_users


def test_candidate_lists_hold_distinct_items(tiny_raw):
    df = _read(tiny_raw, "impressions").to_pandas()
    df = df[df["item_id"] != "i_unknown"]
    dup = df.duplicated(["request_id", "item_id"], keep=False)
    # Only the generator's deliberate exact-duplicate rows may repeat a (request, item) pair.
    assert df[dup].duplicated(keep=False).all()
    assert np.isfinite(df["oracle"]).all()
