"""The shipped wan-mini: loads as a video model with its adapters and profile, within the 30 MB budget."""
import json

from ddit_export.models.registry import load_model, zoo_folder


def test_wan_mini_is_shipped_small_with_adapters_and_a_profile():
    folder = zoo_folder("wan-mini")
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert size <= 30 * 2**20, f"wan-mini is {size / 2**20:.1f} MiB"
    meta = json.loads((folder / "ddit_model.json").read_text())
    assert meta["format"] == "ddit-pixel-video/1" and meta["frames"] == 8 and "schedule" in meta
    m = load_model("wan-mini")
    assert m.family == "wan" and m.geometry().grid == (4, 8, 8) and m.transformer.sizes == (1, 2, 4)
    assert (folder / "transformer" / "ddit_adapters.safetensors").is_file() and m.transformer.adapter_settings.rank > 0
