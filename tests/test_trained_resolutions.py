"""Issue 11, bad input: ``generate`` at a resolution the weights were not trained at is allowed (RoPE extrapolates)
with one warning line naming the trained resolutions; sizes that do not divide the token grid stay errors. The
trained resolutions come from ``ddit_model.json`` (``trained_resolutions``, default ``[[height, width]]``) and
travel into the bundle manifest (optional; older bundles: the bundle's own height x width)."""
import json
import shutil
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from ddit_export.api import generate_images
from ddit_export.bundle import load, read_manifest
from ddit_export.cli import main
from ddit_export.errors import BundleError, ConfigError, WeightsError
from ddit_export.models.registry import PIXEL_META, load_model
from ddit_export.shapes import parse_resolutions, resolution_warning


def trained_lines(lines):
    return [ln for ln in lines if "was trained at" in ln]


def with_meta(tiny_model_dir, tmp_path, **meta):
    folder = shutil.copytree(tiny_model_dir, tmp_path / "model")
    p = folder / PIXEL_META
    p.write_text(json.dumps({**json.loads(p.read_text()), **meta}))
    return folder


def test_folder_default_is_its_own_size_and_other_sizes_warn_once(tiny_model_dir):
    assert load_model(str(tiny_model_dir)).trained_resolutions == ((32, 32),)
    lines = []
    generate_images(model=str(tiny_model_dir), steps=4, warn=lines.append)
    assert lines == []
    generate_images(model=str(tiny_model_dir), height=48, width=64, steps=4, warn=lines.append)
    assert lines == ["warning: tiny-saved was trained at 32x32; 48x64 is outside that (allowed: RoPE extrapolates, "
                     "but expect lower quality)"]


def test_listed_resolutions_do_not_warn(tiny_model_dir, tmp_path):
    folder = with_meta(tiny_model_dir, tmp_path, trained_resolutions=[[32, 32], [64, 64]])
    assert load_model(str(folder)).trained_resolutions == ((32, 32), (64, 64))
    lines = []
    generate_images(model=str(folder), height=64, width=64, steps=4, warn=lines.append)
    assert lines == []
    generate_images(model=str(folder), height=48, width=48, steps=4, warn=lines.append)
    assert len(lines) == 1 and "trained at 32x32, 64x64; 48x48" in lines[0]


def test_a_grid_the_sizes_cannot_divide_is_still_an_error(tiny_model_dir):
    lines = []
    with pytest.raises(ConfigError, match=r"\[4\] do not divide the 10x10 token grid"):
        generate_images(model=str(tiny_model_dir), height=20, width=20, steps=4, sizes=(1, 4), warn=lines.append)
    assert lines == []  # the error comes first, no warning before it
    generate_images(model=str(tiny_model_dir), height=20, width=20, steps=4, warn=lines.append)
    assert len(trained_lines(lines)) == 1 and any("not used at 20x20" in ln for ln in lines)


def test_cli_prints_one_warning_line(tiny_model_dir, tmp_path):
    r = CliRunner().invoke(main, ["generate", "--model", str(tiny_model_dir), "--height", "48", "--width", "48",
                                  "--steps", "4", "--out", str(tmp_path / "a.png")])
    assert r.exit_code == 0, r.output
    assert len(trained_lines(r.output.splitlines())) == 1 and (tmp_path / "a.png").is_file()


def test_random_presets_have_no_trained_list():
    assert load_model("tiny").trained_resolutions is None
    assert resolution_warning("tiny", None, 64, 64) is None


@pytest.mark.parametrize("value", [[], [[32]], [[32, 0]], [[32, "32"]], [[True, 32]], "32x32", [32, 32]])
def test_malformed_lists_are_refused(tiny_model_dir, tmp_path, value):
    with pytest.raises(ValueError, match="trained_resolutions"):
        parse_resolutions(value)
    folder = with_meta(tiny_model_dir, tmp_path, trained_resolutions=value)
    with pytest.raises(WeightsError, match=f"{PIXEL_META}: 'trained_resolutions'"):
        load_model(str(folder))


def test_the_bundle_carries_the_list(tiny_bundle, bundle_copy):
    from ddit_export.export.build import _model_entry

    model = SimpleNamespace(name="m", vae_scale=1, transformer=SimpleNamespace(adapter_settings=SimpleNamespace(
        rank=4)), latent_channels=3, default_steps=8, guidance_embeds=False, scheduler_config={},
        default_prompt="p", trained_resolutions=((32, 32), (64, 64)))
    geom = SimpleNamespace(height=32, width=32)
    assert _model_entry(model, geom, 8, {})["trained_resolutions"] == [[32, 32], [64, 64]]
    assert "trained_resolutions" not in _model_entry(SimpleNamespace(**{**vars(model), "trained_resolutions": None}),
                                                     geom, 8, {})
    # a bundle without the field (the random preset, or built before it existed): its own height x width
    m = read_manifest(tiny_bundle)
    assert "trained_resolutions" not in m.model and m.trained_resolutions == ((32, 32),)
    lines = []
    generate_images(bundle=str(tiny_bundle), steps=4, warn=lines.append)
    assert trained_lines(lines) == []


def test_generate_bundle_warns_outside_the_list(bundle_copy):
    p = bundle_copy / "manifest.json"
    d = json.loads(p.read_text())
    d["model"]["trained_resolutions"] = [[64, 64]]
    p.write_text(json.dumps(d))
    assert load(bundle_copy).trained_resolutions == ((64, 64),)
    lines = []
    generate_images(bundle=str(bundle_copy), steps=4, warn=lines.append)
    assert len(trained_lines(lines)) == 1 and "trained at 64x64; 32x32" in lines[0]
    d["model"]["trained_resolutions"] = [[64]]
    p.write_text(json.dumps(d))
    with pytest.raises(BundleError, match="field 'model': 'trained_resolutions' entry"):
        load(bundle_copy)
