"""Issue 19, bad input: a schedule profile calibrated at one resolution and used at another prints one warning line
naming both. ``calibrate`` records the resolution it measured at; it travels through ``ddit_model.json``
(``schedule_resolution``) and the bundle manifest (``model.schedule_resolution``)."""
import json
import shutil

import pytest
from click.testing import CliRunner

from ddit_export.api import generate_images
from ddit_export.bundle import load
from ddit_export.cli import main
from ddit_export.errors import BundleError, WeightsError
from ddit_export.models.registry import PIXEL_META, load_model


def profile_lines(lines):
    return [ln for ln in lines if "schedule profile" in ln]


def with_meta(folder, tmp_path, **meta):
    out = shutil.copytree(folder, tmp_path / "model")
    p = out / PIXEL_META
    p.write_text(json.dumps({**json.loads(p.read_text()), **meta}))
    return out


def test_profile_used_at_another_resolution_warns_once(tiny_model_dir, tmp_path):
    folder = with_meta(tiny_model_dir, tmp_path, schedule_resolution=[32, 32],
                       trained_resolutions=[[32, 32], [48, 48]])
    assert load_model(str(folder)).schedule_resolution == (32, 32)
    lines = []
    generate_images(model=str(folder), steps=4, warn=lines.append)
    assert lines == []
    generate_images(model=str(folder), height=48, width=48, steps=4, warn=lines.append)
    assert len(lines) == 1
    assert lines[0].startswith("warning: tiny-saved's schedule profile (") and "calibrated at 32x32; this run is 48x48" \
        in lines[0] and "ddit-export calibrate --height 48 --width 48" in lines[0]
    # an explicit schedule is the user's choice, not the profile: no warning
    lines.clear()
    generate_images(model=str(folder), height=48, width=48, steps=4, tau=0.01, warn=lines.append)
    generate_images(model=str(folder), height=48, width=48, steps=4, static=(1, 2, 2, 1), warn=lines.append)
    assert lines == []


def test_profiles_without_the_field_do_not_warn(tiny_model_dir):
    assert load_model(str(tiny_model_dir)).schedule_resolution is None
    lines = []
    generate_images(model=str(tiny_model_dir), height=48, width=48, steps=4, warn=lines.append)
    assert profile_lines(lines) == []


def test_malformed_field_is_refused(tiny_model_dir, tmp_path):
    folder = with_meta(tiny_model_dir, tmp_path, schedule_resolution=[32])
    with pytest.raises(WeightsError, match="schedule_resolution"):
        load_model(str(folder))


def test_calibrate_records_the_resolution_and_the_bundle_carries_it(tmp_path, bundle_copy):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a large red circle at the left on a black background\n"
                       "a small blue square at the top on a white background\n")
    r = CliRunner().invoke(main, ["calibrate", "--bundle", str(bundle_copy), "--prompts", str(prompts), "--steps",
                                  "6", "--policy", "ladder:n4=1", "--sweep", "tail=2", "--work", str(tmp_path / "w"),
                                  "--profile", str(tmp_path / "prof.json"), "--quiet", "--min-psnr", "0",
                                  "--max-quality-drop", "100"])
    assert r.exit_code == 0, r.output + r.stderr
    assert json.loads((tmp_path / "prof.json").read_text())["resolution"] == [32, 32]
    man = json.loads((bundle_copy / "manifest.json").read_text())
    assert man["model"]["schedule_resolution"] == [32, 32] and man["calibration"]["resolution"] == [32, 32]
    assert load(bundle_copy).schedule_resolution == (32, 32)
    lines = []
    generate_images(bundle=str(bundle_copy), steps=6, warn=lines.append)
    assert profile_lines(lines) == []
    # a bundle whose profile came from another resolution (built at 32x32 from a 64x64 profile) warns
    man["model"]["schedule_resolution"] = [64, 64]
    (bundle_copy / "manifest.json").write_text(json.dumps(man))
    generate_images(bundle=str(bundle_copy), steps=6, warn=lines.append)
    assert len(profile_lines(lines)) == 1 and "calibrated at 64x64; this run is 32x32" in lines[0]
    man["model"]["schedule_resolution"] = "64x64"
    (bundle_copy / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(BundleError, match="schedule_resolution"):
        load(bundle_copy)


def test_build_writes_the_models_profile_resolution():
    from types import SimpleNamespace

    from ddit_export.export.build import _model_entry

    model = SimpleNamespace(name="m", vae_scale=1, transformer=SimpleNamespace(adapter_settings=SimpleNamespace(
        rank=4)), latent_channels=3, default_steps=8, guidance_embeds=False, scheduler_config={},
        default_prompt="p", trained_resolutions=None, schedule_resolution=(64, 64))
    assert _model_entry(model, SimpleNamespace(height=32, width=32), 8, {})["schedule_resolution"] == [64, 64]


def test_evaluate_at_another_side_warns_and_notes_it(tiny_model_dir, tmp_path):
    from ddit_export.quality.evaluate import evaluate
    from ddit_export.settings import EvalSettings

    folder = with_meta(tiny_model_dir, tmp_path, schedule_resolution=[32, 32])
    lines = []
    rep = evaluate(EvalSettings(model=str(folder), n_prompts=3, steps=4, side=48, training_free=False,
                                out=str(tmp_path / "ev")), progress=False, log=lines.append, reference_n=8)
    assert len(profile_lines(lines)) == 1 and "calibrated at 32x32; this run is 48x48" in profile_lines(lines)[0]
    assert any("calibrated at 32x32" in n for n in rep["notes"])
