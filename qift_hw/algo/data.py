"""Calibration and evaluation token windows from a fixed, documented text split.

Sources:
- "pydoc" (default, offline): the values of CPython's `pydoc_data.topics.topics` (English prose shipped with
  Python, PSF licence), joined with blank lines in sorted key order.
- a path to any UTF-8 text file.
- "wikitext2" / "c4" through the optional `datasets` package, when it and the hub are reachable.

Split of one text (pydoc, text files): the first `CALIB_FRACTION` of the characters, cut at the next paragraph
break ("\\n\\n", else newline), is the calibration part; the rest is the evaluation part. The two never overlap.
wikitext2 calibrates on its train split and evaluates on its test split; c4 on its first train and first
validation shards (QuaRot's choice).

Evaluation windows are consecutive, non-overlapping and start at the first token of the evaluation part (the
QuaRot/GPTQ perplexity protocol); calibration windows start at seeded random offsets inside the calibration part.
"""

from __future__ import annotations

from pathlib import Path

import torch

from qift_hw.core.errors import QiftError

CALIB_FRACTION = 0.5
SPLITS = ("calib", "eval")
DEFAULT_SEQLEN = 2048
DEFAULT_CALIB_WINDOWS = 128
HUB_SOURCES = ("wikitext2", "c4")

_TOKEN_CACHE: dict[tuple, torch.Tensor] = {}


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise QiftError(f"unknown split {split!r}; use 'calib' or 'eval'")


def pydoc_text() -> str:
    """The default offline corpus: pydoc topic texts in sorted key order, separated by blank lines."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k].strip() for k in sorted(topics))


def split_point(text: str, fraction: float = CALIB_FRACTION) -> int:
    """Character index where the evaluation part starts: the first paragraph break at or after fraction*len."""
    if not 0.0 < fraction < 1.0:
        raise QiftError(f"calibration fraction must be in (0, 1), got {fraction}")
    start = int(len(text) * fraction)
    for sep in ("\n\n", "\n"):
        pos = text.find(sep, start)
        if pos != -1:
            return pos + len(sep)
    return start


def split_text(text: str, split: str, fraction: float = CALIB_FRACTION) -> str:
    """The calibration or evaluation part of one text (see the module docstring)."""
    _check_split(split)
    cut = split_point(text, fraction)
    return text[:cut] if split == "calib" else text[cut:]


def _hub_text(source: str, split: str) -> str:
    try:
        import datasets
    except ImportError as exc:
        raise QiftError(
            f"text source {source!r} needs the optional `datasets` package; `pip install datasets`, "
            "or use the offline default (pydoc) or a text file"
        ) from exc
    try:
        if source == "wikitext2":
            ds = datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split="train" if split == "calib" else "test")
            return "\n\n".join(ds["text"])
        files = {
            "calib": ("train", "en/c4-train.00000-of-01024.json.gz"),
            "eval": ("validation", "en/c4-validation.00000-of-00008.json.gz"),
        }[split]
        ds = datasets.load_dataset("allenai/c4", data_files={files[0]: files[1]}, split=files[0])
        return "\n\n".join(ds["text"][:3000] if split == "eval" else ds["text"][:20000])
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise QiftError(
            f"cannot fetch {source!r} from the Hugging Face hub ({first}); "
            "use the offline default (pydoc) or --text FILE"
        ) from exc


def _text_file(source: str) -> Path:
    path = Path(source).expanduser()
    if not path.is_file():
        raise QiftError(
            f"text source {source!r} is not a file nor one of pydoc, wikitext2, c4; pass an existing text file"
        )
    return path


def load_text(source: str = "pydoc", split: str = "eval") -> str:
    """Text of one split of a source: "pydoc", "wikitext2", "c4", or a path to a UTF-8 text file."""
    _check_split(split)
    if source == "pydoc":
        text = split_text(pydoc_text(), split)
    elif source in HUB_SOURCES:
        text = _hub_text(source, split)
    else:
        path = _text_file(source)
        try:
            full = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise QiftError(f"text file {source} is not UTF-8 ({exc.reason}); convert it to UTF-8") from exc
        if not full.strip():
            raise QiftError(f"text file {source} is empty; pass a file with text in it")
        text = split_text(full, split)
    if not text.strip():
        raise QiftError(f"the {split} part of text source {source!r} is empty; pass a longer text")
    return text


def text_digest(source: str) -> str:
    """What a text source holds, for run identities: the SHA-256 of a file's bytes or of the pydoc text; a hub
    dataset by its name (its content is fixed by the name)."""
    import hashlib

    if source in HUB_SOURCES:
        return f"dataset:{source}"
    if source == "pydoc":
        data = pydoc_text().encode()
    else:
        data = _text_file(source).read_bytes()
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _cache_key(tokenizer, source: str, split: str) -> tuple:
    stamp = None
    path = Path(source).expanduser()
    if source not in ("pydoc", *HUB_SOURCES) and path.is_file():
        st = path.stat()
        stamp = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    return (id(tokenizer), getattr(tokenizer, "name_or_path", None), len(tokenizer), source, split, stamp)


def tokenize_split(tokenizer, source: str = "pydoc", split: str = "eval") -> torch.Tensor:
    """Token ids (1-D LongTensor, no special tokens added) of one split of a source; cached per process."""
    key = _cache_key(tokenizer, source, split)
    if key not in _TOKEN_CACHE:
        text = load_text(source, split)
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # silence "sequence longer than the model maximum"
        try:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        finally:
            hf_logging.set_verbosity(verbosity)
        if len(ids) == 0:
            raise QiftError(f"the {split} part of {source!r} gives no tokens; pass a longer text")
        _TOKEN_CACHE[key] = torch.tensor(ids, dtype=torch.long)
    return _TOKEN_CACHE[key]


def get_windows(
    tokenizer,
    source: str = "pydoc",
    split: str = "calib",
    seqlen: int = DEFAULT_SEQLEN,
    n: int | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Token windows [n, seqlen] (LongTensor, CPU) of one split.

    eval: the first n consecutive non-overlapping windows (n=None: all that fit).
    calib: n windows (default 128) at random offsets drawn with `seed`; windows may overlap each other but never
    leave the calibration part.
    """
    _check_split(split)
    if seqlen < 2:
        raise QiftError(f"window length must be at least 2 tokens, got {seqlen}")
    if n is not None and n < 1:
        raise QiftError(f"number of windows must be positive, got {n}")
    ids = tokenize_split(tokenizer, source, split)
    total = ids.numel()
    if split == "eval":
        available = total // seqlen
        if available == 0:
            raise QiftError(
                f"the eval part of {source!r} has {total} tokens, less than one window of {seqlen}; "
                "use a shorter --seqlen or a longer text"
            )
        if n is None:
            n = available
        if n > available:
            raise QiftError(
                f"the eval part of {source!r} holds only {available} windows of {seqlen} tokens, asked for {n}; "
                "use fewer windows or a shorter --seqlen"
            )
        return ids[: n * seqlen].view(n, seqlen).clone()
    if total < seqlen:
        raise QiftError(
            f"the calib part of {source!r} has {total} tokens, less than one window of {seqlen}; "
            "use a shorter --seqlen or a longer text"
        )
    n = DEFAULT_CALIB_WINDOWS if n is None else n
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, total - seqlen + 1, (n,), generator=gen)
    return torch.stack([ids[s : s + seqlen] for s in starts.tolist()])


def calib_windows(tokenizer, source: str = "pydoc", seqlen: int = DEFAULT_SEQLEN, n: int = DEFAULT_CALIB_WINDOWS,
                  seed: int = 0) -> torch.Tensor:
    """Shorthand for get_windows(..., split="calib")."""
    return get_windows(tokenizer, source, "calib", seqlen, n, seed)


def eval_windows(tokenizer, source: str = "pydoc", seqlen: int = DEFAULT_SEQLEN, n: int | None = None) -> torch.Tensor:
    """Shorthand for get_windows(..., split="eval")."""
    return get_windows(tokenizer, source, "eval", seqlen, n)
