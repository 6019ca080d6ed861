import pytest
import torch

from ddit_export.errors import VocabularyError
from ddit_export.models.text import WordTextEncoder


def enc():
    torch.manual_seed(0)
    return WordTextEncoder(vocab=["a", "red", "blue", "circle", "square"], max_length=6, dim=16,
                           joint_attention_dim=8, pooled_projection_dim=4, num_heads=2)


def test_shapes_padding_and_word_order():
    e = enc().eval()
    with torch.no_grad():
        states, pooled = e.encode(["a red circle", "a blue square", "circle red a"])
    assert states.shape == (3, 6, 8) and pooled.shape == (3, 4)
    assert torch.all(states[0, 3:] == 0)  # padding positions carry nothing
    assert not torch.allclose(states[0], states[2])  # word order matters


def test_unknown_words_are_named_and_long_prompts_rejected():
    e = enc()
    with pytest.raises(VocabularyError, match="green, zebra"):
        e.encode(["a zebra and a green circle"])
    with pytest.raises(VocabularyError, match="at most 6"):
        e.encode(["a red circle a red circle a"])
    with pytest.raises(VocabularyError, match="empty"):
        e.encode(["..."])


def test_save_and_load_pretrained(tmp_path):
    e = enc().eval()
    e.save_pretrained(tmp_path)
    e2 = WordTextEncoder.from_pretrained(tmp_path, low_cpu_mem_usage=False).eval()
    with torch.no_grad():
        torch.testing.assert_close(e2.encode(["a red circle"]), e.encode(["a red circle"]))
