import pytest

from ddit_export.errors import ConfigError
from ddit_export.schedule import StepRecord, Trace
from ddit_export.schedule.plot import plot, table


def _trace():
    t = Trace("m", (8, 8), {"x": 1}, fine_flops_per_step=100.0)
    t.steps = [StepRecord(0, 1.0, 1, "warmup", 64, 100.0), StepRecord(1, 0.5, 2, "rule", 16, 30.0, {2: 0.001}),
               StepRecord(2, 0.2, 4, "rule", 4, 10.0, {2: 0.0004, 4: 0.0005})]
    return t


def test_trace_roundtrip_and_summary(tmp_path):
    t = _trace()
    assert t.coarse_fraction == pytest.approx(2 / 3)
    assert t.flops_ratio == pytest.approx(140 / 300)
    loaded = Trace.load(t.save(tmp_path / "t.json"))
    assert loaded.sizes == [1, 2, 4] and loaded.steps[2].sigmas == {2: 0.0004, 4: 0.0005}
    assert loaded.grid == (8, 8)


def test_table_and_plot(tmp_path):
    t = _trace()
    text = table(t)
    assert "coarse steps: 67%" in text and len(text.splitlines()) == 5
    png = plot(t, tmp_path / "t.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_bad_trace_file(tmp_path):
    (tmp_path / "x.json").write_text('{"format": "other"}')
    with pytest.raises(ConfigError, match="not a ddit trace"):
        Trace.load(tmp_path / "x.json")
    with pytest.raises(ConfigError, match="cannot read"):
        Trace.load(tmp_path / "missing.json")
