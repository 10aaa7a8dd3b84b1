"""Stage cache: stable hashes, compute once, and one computation when two processes race."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from fitact_pipeline.cache import cached_stage, config_hash, is_cached

REPO = Path(__file__).resolve().parents[1]


def test_config_hash_is_stable_and_discriminating():
    a = {"model": {"name": "vgg16", "width": 0.25}, "epochs": 30, "lr": 0.01}
    b = {"lr": 0.01, "epochs": 30, "model": {"width": 0.25, "name": "vgg16"}}
    assert config_hash(a) == config_hash(b) == config_hash(OmegaConf.create(a))
    assert config_hash({"w": 1.0}) == config_hash({"w": 1})
    assert config_hash(a) != config_hash({**a, "lr": 0.02})
    assert config_hash({"x": [1, 2]}) != config_hash({"x": [2, 1]})
    assert len(config_hash(a)) == 16 and config_hash(a) == "%s" % config_hash(dict(a))
    with pytest.raises(TypeError):
        config_hash({"x": object()})


def text_stage(tmp_path, calls, value="artefact"):
    def compute():
        calls.append(1)
        return value

    return cached_stage(tmp_path, "baseline", "k1", compute,
                        lambda p, v: (p / "v.txt").write_text(v), lambda p: (p / "v.txt").read_text())


def test_compute_once_then_load(tmp_path):
    calls = []
    assert text_stage(tmp_path, calls) == "artefact"
    assert text_stage(tmp_path, calls, value="other") == "artefact"  # loaded, not recomputed
    assert len(calls) == 1 and is_cached(tmp_path, "baseline", "k1")
    assert (tmp_path / "baseline" / "k1" / "v.txt").exists()


def test_failed_compute_leaves_no_artefact(tmp_path):
    def boom():
        raise RuntimeError("training crashed")

    with pytest.raises(RuntimeError):
        cached_stage(tmp_path, "s", "k", boom, lambda p, v: None, lambda p: "loaded")
    assert not is_cached(tmp_path, "s", "k")
    assert cached_stage(tmp_path, "s", "k", lambda: "ok", lambda p, v: None, lambda p: "loaded") == "ok"


WORKER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from fitact_pipeline.cache import cached_stage
    cache, log = sys.argv[1], Path(sys.argv[2])

    def compute():
        with open(log, "a") as f:
            f.write(f"compute {os.getpid()}\\n")
        time.sleep(2.0)  # long enough that the other process arrives while this one computes
        return f"made by {os.getpid()}"

    value = cached_stage(cache, "baseline", "shared", compute,
                         lambda p, v: (p / "v.txt").write_text(v), lambda p: (p / "v.txt").read_text())
    print(value)
""")


@pytest.mark.slow
def test_two_processes_compute_once(tmp_path):
    log = tmp_path / "computes.log"
    cmd = [sys.executable, "-c", WORKER, str(tmp_path / "cache"), str(log)]
    procs = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True,
                              env={"PYTHONPATH": str(REPO), "PATH": ""}) for _ in range(2)]
    outputs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert len(log.read_text().splitlines()) == 1
    assert outputs[0] == outputs[1] and outputs[0].startswith("made by")


def test_a_truncated_artefact_is_recomputed_with_a_warning_naming_it(tmp_path, caplog):
    """A half-written model.pt (a crash, a full disk, a copy cut short) behind a completion marker
    must not crash every later run, nor load silently: it is recomputed, and the path is named."""
    import torch

    state = {"w": torch.arange(1000, dtype=torch.float32)}
    calls = []

    def stage():
        return cached_stage(tmp_path, "baseline", "k", lambda: calls.append(1) or state,
                            lambda p, s: torch.save(s, p / "model.pt"),
                            lambda p: torch.load(p / "model.pt", weights_only=True))

    stage()
    model_pt = tmp_path / "baseline" / "k" / "model.pt"
    model_pt.write_bytes(model_pt.read_bytes()[:700])  # truncated
    with caplog.at_level("WARNING", logger="fitact_pipeline.cache"):
        again = stage()
    assert torch.equal(again["w"], state["w"]) and len(calls) == 2
    assert str(tmp_path / "baseline" / "k") in caplog.text and "checksum mismatch of model.pt" in caplog.text
    assert torch.equal(stage()["w"], state["w"]) and len(calls) == 2  # intact again: loaded


def test_an_altered_artefact_that_still_loads_is_not_trusted(tmp_path):
    calls = []
    text_stage(tmp_path, calls)
    (tmp_path / "baseline" / "k1" / "v.txt").write_text("tampered")
    assert text_stage(tmp_path, calls) == "artefact" and len(calls) == 2
    assert is_cached(tmp_path, "baseline", "k1")
