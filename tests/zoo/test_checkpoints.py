"""checkpoints/wan-mini: the continued wan-mini weights committed for the next session's run (checkpoints/README.md).
They must load into the shipped trunk's architecture (else ``--init`` refuses them) and continue the shipped
weights' training record (else they are not what the README says they are), or be the shipped trunk itself."""
import json
from pathlib import Path

import pytest

from ddit_export.zoo import train_wan as W

ROOT = Path(__file__).resolve().parents[2]
CONT = ROOT / "checkpoints" / "wan-mini"
SHIPPED = ROOT / "ddit_export" / "zoo" / "weights" / "wan-mini"

pytestmark = pytest.mark.skipif(not (CONT / "ddit_model.json").is_file(), reason="no checkpoints/wan-mini")


def test_the_continued_weights_load_into_the_shipped_architecture():
    model = W.Pair(*W.build(W.WanTrainConfig(layers=6, batch=32))[:2])
    W.init_from(model, CONT)  # raises ConfigError on another architecture
    meta = json.loads((CONT / "ddit_model.json").read_text())
    shipped = json.loads((SHIPPED / "ddit_model.json").read_text())
    assert meta["format"] == shipped["format"] and meta["frames"] == shipped["frames"]


def test_their_record_continues_the_shipped_one():
    cont, shipped = W.lineage(CONT), W.lineage(SHIPPED)
    assert shipped["runs"] and cont["runs"][:len(shipped["runs"])] == shipped["runs"]
    added = cont["runs"][len(shipped["runs"]):]
    if not added:  # the shipped trunk is this checkpoint: the same weights, not only the same record
        for part in ("transformer", "text_encoder"):
            name = f"{part}/diffusion_pytorch_model.safetensors"
            assert (CONT / name).read_bytes() == (SHIPPED / name).read_bytes(), part
        return
    assert cont["steps"] == shipped["steps"] + sum(r["steps"] for r in added)
    assert cont["clips"] == shipped["clips"] + sum(r["steps"] * r["batch"] for r in added)
    # each run starts where the one before it ended (its init's held-out loss is that run's last one)
    for before, run in zip(cont["runs"][:-1], cont["runs"][1:]):
        assert run["heldout_loss_start"] == pytest.approx(before["heldout_loss"], abs=2e-3)
