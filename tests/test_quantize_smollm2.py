"""End-to-end on the embedded SmolLM2-135M (slow): rotation invariance of perplexity, W2A4KV4 GPTQ, export."""

import pytest
import torch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    from qift_hw.algo.models import load_model

    torch.set_num_threads(2)
    return load_model("smollm2")


def test_smollm2_gptq_export_round_trip(smollm2, tmp_path):
    import copy

    from qift_hw.algo.data import get_windows
    from qift_hw.algo.evaluate import evaluate_ppl
    from qift_hw.algo.checkpoint import load_quantized, save_quantized
    from qift_hw.algo.config import QuantConfig
    from qift_hw.algo.prepare import prepare_model
    from qift_hw.algo.quantize import quantize_model

    base, tok = smollm2
    ev = get_windows(tok, "pydoc", "eval", 256, 2)
    calib = get_windows(tok, "pydoc", "calib", 512, 16, 0)  # 8192 tokens: more than down_proj's 1536 inputs
    fp = evaluate_ppl(base, ev, progress=False)

    rotated = copy.deepcopy(base)
    prepare_model(rotated, QuantConfig(a_bits=16, kv_bits=16))
    assert evaluate_ppl(rotated, ev, progress=False) == pytest.approx(fp, rel=1e-4)

    model = copy.deepcopy(base)
    cfg = QuantConfig(levels="mnz", method="gptq", calib_windows=16, calib_seqlen=512)
    qm = quantize_model(model, tok, cfg, calib=calib, progress=False)
    errs = qm.layer_errors()
    assert len(errs) == 30 and all(0 < e < 1 for e in errs)
    ppl = evaluate_ppl(model, ev, progress=False)
    assert fp < ppl < 500  # 58 with 128 x 512 calibration tokens on 28 x 2048 evaluation tokens

    path = save_quantized(tmp_path / "smol.safetensors", qm, model_id="smollm2")
    reloaded, _ = load_quantized(path)
    assert evaluate_ppl(reloaded, ev, progress=False) == ppl
