"""Fault injection on quantization runs and results folders: interruptions, stale inputs, concurrent writers.

Cases (15 tests): SIGINT and SIGKILL at a random layer then resume (on one and on two threads), equal tensor
for tensor to an uninterrupted run in another process (2); a text file changed under the same path gets a new
run (1); changed weights (or batch size, device) under the same name get another run folder and are refused in
the old one (1); a corrupt run config.json is refused with one line (1); a run that fails validation leaves no
run folder, nor a results folder (2); a run folder held by another process is refused (1); a results folder
held by another process is refused by the command line (1); a rerun moves the old results aside and `report`
takes the newer partial (2); `report --out` on an input folder is refused (1); differing duplicate runs are
reported, equal ones not (2); a temporary left by a killed writer is swept at the next write (1).
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from qift_hw.algo.config import QuantConfig
from qift_hw.algo.models import tiny_llama
from qift_hw.algo.quantize import quantize_model
from qift_hw.algo.run_folder import open_run_dir, run_inputs, weights_digest
from qift_hw.core.errors import QiftError
from qift_hw.core.io import atomic_path, lock_folder, write_text
from qift_hw.study.experiments import run_dir_for
from test_faults_cli import default_sigint

N_LAYERS = 4

CHILD = textwrap.dedent('''
    import os, signal, sys, torch
    torch.set_num_threads(int(sys.argv[5]))
    import qift_hw.algo.quantize as qz
    from qift_hw.algo.checkpoint import save_quantized
    from qift_hw.algo.config import QuantConfig
    from qift_hw.algo.models import tiny_llama

    run_dir, out, kill_after, sig = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    if kill_after >= 0:
        real = qz.save_layer

        def save_then_die(run, i, *args):
            path = real(run, i, *args)
            if i == kill_after:
                os.kill(os.getpid(), getattr(signal, sig))
            return path
        qz.save_layer = save_then_die
    model = tiny_llama(seed=3, layers=%d, hidden=64, intermediate=192)
    calib = torch.randint(0, 256, (6, 32), generator=torch.Generator().manual_seed(1))
    cfg = QuantConfig(levels="mnz", method="gptq", calib_windows=6, calib_seqlen=32, batch_size=4, blocksize=16)
    qm = qz.quantize_model(model, None, cfg, run_dir=None if run_dir == "-" else run_dir, calib=calib, progress=False)
    save_quantized(out, qm)
    print("resumed", qm.resumed_layers)
''' % N_LAYERS)


def child(tmp: Path, run_dir, out: Path, kill_after: int = -1, sig: str = "SIGINT", threads: int = 1):
    script = tmp / "child.py"
    script.write_text(CHILD)
    return subprocess.run([sys.executable, str(script), str(run_dir), str(out), str(kill_after), sig, str(threads)],
                          capture_output=True, text=True, timeout=120, preexec_fn=default_sigint)


def tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def assert_same_tensors(a: Path, b: Path) -> None:
    ta, tb = tensors(a), tensors(b)
    assert sorted(ta) == sorted(tb)
    for k in ta:
        assert ta[k].dtype == tb[k].dtype and torch.equal(ta[k], tb[k]), k


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted quantization without a run folder, in its own process, on one thread."""
    tmp = tmp_path_factory.mktemp("reference")
    res = child(tmp, "-", tmp / "ref.safetensors")
    assert res.returncode == 0, res.stderr
    return tmp / "ref.safetensors"


@pytest.mark.parametrize("sig,seed,threads", [("SIGINT", 1, 1), ("SIGKILL", 2, 2)])
def test_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path, reference, sig, seed, threads):
    """The resumed process (with two threads for SIGKILL: GPTQ is reproducible bit for bit across processes and
    thread counts) ends with the reference's tensors."""
    layer = random.Random(seed).randrange(N_LAYERS - 1)
    run = tmp_path / "run"
    res = child(tmp_path, run, tmp_path / "never.safetensors", kill_after=layer, sig=sig)
    assert res.returncode != 0 and not (tmp_path / "never.safetensors").exists()
    assert sorted(p.name for p in run.glob("layer_*")) == [f"layer_{i:03d}.safetensors" for i in range(layer + 1)]
    res = child(tmp_path, run, tmp_path / "resumed.safetensors", threads=threads)
    assert res.returncode == 0, res.stderr
    assert f"resumed {layer + 1}" in res.stdout
    assert_same_tensors(reference, tmp_path / "resumed.safetensors")


def _qift(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qift_hw", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def _one_line_error(res: subprocess.CompletedProcess, *words: str) -> None:
    lines = res.stderr.strip().splitlines()
    assert res.returncode != 0 and len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_text_changed_in_place_is_not_resumed(tmp_path):
    """`qift-hw quantize` twice with the same --text path: after the file's content changed the run gets its own
    folder and new codes (every layer is W2, so old layers would give the old codes)."""
    from test_stats import _save_word_tokenizer

    model = tmp_path / "model"
    tiny_llama(seed=0, hidden=64, intermediate=128).save_pretrained(model)
    _save_word_tokenizer(model)
    text = tmp_path / "text.txt"
    rng = random.Random(0)
    write_text(text, "\n\n".join(" ".join(f"w{rng.randrange(100)}" for _ in range(200)) for _ in range(4)))
    common = ("--model", str(model), "--text", str(text), "--calib-windows", "4", "--calib-seqlen", "32",
              "--device", "cpu", "--no-progress", "--threads", "1")
    res = _qift(tmp_path, "quantize", "old.safetensors", *common, "--run-root", "runs")
    assert res.returncode == 0, res.stderr
    old = text.read_text()
    new = re.sub(r"w(\d+)", lambda m: f"w{(int(m[1]) * 7 + 3) % 100}", old)
    assert new != old
    write_text(text, new)
    res = _qift(tmp_path, "quantize", "new.safetensors", *common, "--run-root", "runs")
    assert res.returncode == 0, res.stderr
    assert len([p for p in (tmp_path / "runs").iterdir() if p.is_dir()]) == 2
    codes = [k for k in tensors(tmp_path / "new.safetensors") if k.endswith(".qcodes")]
    assert any(not torch.equal(tensors(tmp_path / "old.safetensors")[k], tensors(tmp_path / "new.safetensors")[k])
               for k in codes)


def _cfg(**kw) -> QuantConfig:
    return QuantConfig(**{"levels": "mnz", "method": "rtn", "scale_method": "maxabs", **kw})


def test_changed_weights_under_the_same_name_get_another_run_folder_and_are_refused_in_the_old_one(tmp_path):
    cfg = _cfg()
    old, new = tiny_llama(seed=1, layers=2), tiny_llama(seed=1, layers=2)
    with torch.no_grad():
        new.model.layers[1].mlp.down_proj.weight[0, 0] += 1e-3
    inputs_old = run_inputs(weights_digest(old), "model.safetensors", cfg)
    inputs_new = run_inputs(weights_digest(new), "model.safetensors", cfg)
    assert inputs_old["weights"] != inputs_new["weights"]
    assert run_dir_for(tmp_path, cfg, inputs_old) != run_dir_for(tmp_path, cfg, inputs_new)
    for other in (_cfg(batch_size=4), _cfg(device="meta")):  # batching changes the Hessian's bits
        assert run_dir_for(tmp_path, other, inputs_old) != run_dir_for(tmp_path, cfg, inputs_old)
    quantize_model(old, None, cfg, run_dir=tmp_path / "r", model_id="model.safetensors", progress=False)
    with pytest.raises(QiftError, match=r"different configuration or inputs \(weights\)"):
        quantize_model(new, None, cfg, run_dir=tmp_path / "r", model_id="model.safetensors", progress=False)


def test_corrupt_run_config_is_refused_with_one_line(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(QiftError, match="unreadable config.json"):
        open_run_dir(tmp_path, _cfg(), {"model": "x"})


def test_failed_validation_leaves_no_run_folder(tmp_path):
    with pytest.raises(QiftError, match="out of range"):
        quantize_model(tiny_llama(seed=1, layers=2), None, _cfg(w2_layers="0,9"), run_dir=tmp_path / "r",
                       progress=False)
    assert not (tmp_path / "r").exists()


def test_a_run_folder_held_by_another_writer_is_refused(tmp_path):
    fd = lock_folder(tmp_path / "r")
    try:
        with pytest.raises(QiftError, match="in use by another running qift-hw process"):
            quantize_model(tiny_llama(seed=1, layers=2), None, _cfg(), run_dir=tmp_path / "r", progress=False)
    finally:
        import os

        os.close(fd)
    quantize_model(tiny_llama(seed=1, layers=2), None, _cfg(), run_dir=tmp_path / "r", progress=False)
    assert (tmp_path / "r" / "layer_001.safetensors").is_file()


def _results(folder: Path, ppl: float, command: str = "eval") -> Path:
    row = {"label": "mnz gptq W2A4KV4", "kind": "quant", "ppl": ppl, "weights": "W2", "a_bits": 4, "kv_bits": 4,
           "levels": "mnz", "method": "gptq", "config": {"levels": "mnz"}}
    meta = {"command": command, "model": "m", "text": "pydoc", "eval_windows": 2, "seqlen": 16, "device": "cpu"}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps({"meta": meta, "rows": [row]}))
    return folder


def test_a_results_folder_held_by_another_run_is_refused(tmp_path):
    a = _results(tmp_path / "a", 70.0)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f'''
        import sys, time
        from qift_hw.core.io import lock_folder
        lock_folder({str(tmp_path / "out")!r}); print("held", flush=True); time.sleep(60)''')],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        res = _qift(tmp_path, "report", str(a), "--out", str(tmp_path / "out"))
        _one_line_error(res, str(tmp_path / "out"), "in use")
        assert not (tmp_path / "out" / "results.json").exists()
    finally:
        holder.kill()
        holder.wait()
    res = _qift(tmp_path, "report", str(a), "--out", str(tmp_path / "out"))
    assert res.returncode == 0, res.stderr


def test_a_rerun_moves_the_old_results_aside_and_report_takes_the_newer_partial(tmp_path):
    out = _results(tmp_path / "out", 70.0)
    script = textwrap.dedent(f'''
        from qift_hw.study.report import write_partial
        row = {{"label": "mnz gptq W2A4KV4", "kind": "quant", "ppl": 55.0, "weights": "W2", "a_bits": 4,
               "kv_bits": 4, "levels": "mnz", "method": "gptq", "config": {{"levels": "mnz"}}}}
        meta = {{"command": "rerun", "model": "m", "text": "pydoc", "eval_windows": 2, "seqlen": 16, "device": "cpu"}}
        write_partial([row], {str(out)!r}, meta)''')
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)  # then the rerun dies
    assert not (out / "results.json").exists()
    assert json.loads((out / "results.previous.json").read_text())["rows"][0]["ppl"] == 70.0
    res = _qift(tmp_path, "report", str(out), "--out", str(tmp_path / "merged"))
    assert res.returncode == 0, res.stderr
    assert json.loads((tmp_path / "merged" / "results.json").read_text())["rows"][0]["ppl"] == 55.0


def test_report_takes_a_partial_newer_than_a_stale_complete_file_and_says_so(tmp_path):
    import os

    out = _results(tmp_path / "old", 70.0)
    partial = json.loads((out / "results.json").read_text())
    partial["rows"][0]["ppl"] = 55.0
    (out / "results.partial.json").write_text(json.dumps(partial))
    os.utime(out / "results.json", (1_000_000_000, 1_000_000_000))
    res = _qift(tmp_path, "report", str(out), "--out", str(tmp_path / "merged"))
    assert res.returncode == 0, res.stderr
    assert "results.partial.json, newer than results.json" in res.stderr
    assert json.loads((tmp_path / "merged" / "results.json").read_text())["rows"][0]["ppl"] == 55.0


def test_report_out_on_an_input_folder_is_refused(tmp_path):
    a, b = _results(tmp_path / "a", 70.0), _results(tmp_path / "b", 70.0, "eval b")
    before = (a / "results.json").read_text()
    res = _qift(tmp_path, "report", str(a / "results.json"), str(b), "--out", str(a))
    _one_line_error(res, "--out", "input")
    assert (a / "results.json").read_text() == before and not (a / "results.previous.json").exists()


def test_report_warns_when_one_run_has_different_results_in_two_files(tmp_path):
    a, b = _results(tmp_path / "a", 70.0), _results(tmp_path / "b", 71.5, "eval b")
    res = _qift(tmp_path, "report", str(a), str(b), "--out", str(tmp_path / "merged"))
    assert res.returncode == 0, res.stderr
    assert "'mnz gptq W2A4KV4' is in results 1 and 2 with different ppl (70.000000 and 71.500000)" in res.stderr



def test_equal_duplicate_runs_merge_without_a_warning(tmp_path, capsys):
    from qift_hw.study.report import merge_results, read_results

    parts = read_results([_results(tmp_path / "a", 70.0), _results(tmp_path / "b", 70.0, "eval b")])
    rows, _ = merge_results(parts)
    assert [r["ppl"] for r in rows] == [70.0] and "warning" not in capsys.readouterr().err


def test_a_temporary_left_by_a_killed_writer_is_swept_at_the_next_write(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    target = tmp_path / "model.safetensors"
    stale = tmp_path / f".model.safetensors.qift-tmp-{pid}-abcd1234.safetensors"
    stale.write_bytes(b"\0" * 1024)
    other = tmp_path / f".other.bin.qift-tmp-{pid}-abcd1234.bin"  # another target's: left alone
    other.write_bytes(b"x")
    with atomic_path(target) as tmp:
        assert tmp.name.startswith(".model.safetensors.qift-tmp-")
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and not stale.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, other.name])


def test_a_results_folder_created_by_a_run_that_wrote_nothing_is_removed_at_exit(tmp_path):
    script = textwrap.dedent(f'''
        from qift_hw.study.report import claim_results_folder
        claim_results_folder({str(tmp_path / "new")!r})
        claim_results_folder({str(_results(tmp_path / "old", 70.0))!r})
        raise SystemExit("model load failed")''')
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and "model load failed" in res.stderr
    assert not (tmp_path / "new").exists()
    assert sorted(p.name for p in (tmp_path / "old").iterdir()) == [".qift.lock", "results.previous.json"]
