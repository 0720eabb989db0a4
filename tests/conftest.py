"""Shared test set-up: offline Hugging Face, bounded threads, and the embedded model as a session fixture."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def smollm2():
    """The embedded SmolLM2-135M (float32, CPU) and its tokenizer, loaded once per test session."""
    from qift_hw.algo.models import load_model

    return load_model(None)


@pytest.fixture(scope="session")
def yosys():
    """Command prefix of a Yosys that can synthesise (the area and equivalence tests skip without one)."""
    from qift_hw.core.errors import QiftError
    from qift_hw.rtl.area import find_yosys

    try:
        return find_yosys()
    except QiftError as exc:
        pytest.skip(str(exc))
