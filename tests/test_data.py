"""Calibration/evaluation windows: documented split, no overlap, seeded sampling, clear errors."""

import pytest
import torch

from qift_hw.algo import data
from qift_hw.core.errors import QiftError


class CharTokenizer:
    """Independent toy tokenizer: one token per character (code point), so positions map back to text."""

    name_or_path = "chars"

    def __len__(self):
        return 0x110000

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}


def _text_of(ids):
    return "".join(chr(i) for i in ids.reshape(-1).tolist())


def test_pydoc_split_is_a_partition():
    full = data.pydoc_text()
    calib, ev = data.load_text("pydoc", "calib"), data.load_text("pydoc", "eval")
    assert calib + ev == full
    assert calib.endswith("\n\n") and 0.45 < len(calib) / len(full) < 0.55


def test_windows_stay_inside_their_part(tmp_path):
    text = "".join(f"para {i} " + "x" * (i % 7) + "\n\n" for i in range(2000))
    f = tmp_path / "corpus.txt"
    f.write_text(text)
    tok = CharTokenizer()
    cut = data.split_point(text)
    ev = data.get_windows(tok, str(f), "eval", seqlen=64)
    assert ev.shape == (len(text[cut:]) // 64, 64)
    assert _text_of(ev) == text[cut : cut + ev.numel()]  # consecutive, non-overlapping, from the start
    cal = data.get_windows(tok, str(f), "calib", seqlen=64, n=50, seed=3)
    assert cal.shape == (50, 64)
    calib_text = text[:cut]
    for row in cal:
        assert _text_of(row) in calib_text
    assert torch.equal(cal, data.get_windows(tok, str(f), "calib", seqlen=64, n=50, seed=3))
    assert not torch.equal(cal, data.get_windows(tok, str(f), "calib", seqlen=64, n=50, seed=4))


def test_pydoc_windows_with_real_tokenizer(smollm2):
    _, tok = smollm2
    ev = data.get_windows(tok, "pydoc", "eval", seqlen=512)
    cal = data.get_windows(tok, "pydoc", "calib", seqlen=512, n=8, seed=0)
    assert ev.dtype == torch.long and ev.shape[1] == 512 and ev.shape[0] > 50
    assert cal.shape == (8, 512)
    eval_ids = data.tokenize_split(tok, "pydoc", "eval")
    calib_ids = data.tokenize_split(tok, "pydoc", "calib")
    assert torch.equal(ev.reshape(-1), eval_ids[: ev.numel()])
    # every calibration window is a slice of the calibration tokens only
    slices = calib_ids.unfold(0, 512, 1)
    for row in cal:
        assert (slices == row).all(dim=1).any()
    assert data.tokenize_split(tok, "pydoc", "calib").numel() + eval_ids.numel() > 100_000


def test_errors(tmp_path):
    tok = CharTokenizer()
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(QiftError, match="empty"):
        data.get_windows(tok, str(empty), "eval", seqlen=8)
    with pytest.raises(QiftError, match="not a file"):
        data.get_windows(tok, str(tmp_path / "missing.txt"), "eval", seqlen=8)
    short = tmp_path / "short.txt"
    short.write_text("a few words\n\nand more")
    with pytest.raises(QiftError, match="less than one window"):
        data.get_windows(tok, str(short), "eval", seqlen=1000)
    with pytest.raises(QiftError, match="holds only"):
        data.get_windows(tok, "pydoc", "eval", seqlen=100000, n=5)
    with pytest.raises(QiftError, match="split"):
        data.get_windows(tok, "pydoc", "test", seqlen=8)
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00\x81" * 10)
    with pytest.raises(QiftError, match="UTF-8"):
        data.load_text(str(binary), "eval")


def test_hub_source_without_datasets_is_clear():
    try:
        import datasets  # noqa: F401
    except ImportError:
        with pytest.raises(QiftError, match="datasets"):
            data.load_text("wikitext2", "eval")
    else:
        pytest.skip("datasets installed; the hub path is exercised only online")
