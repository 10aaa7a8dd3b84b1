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


def test_two_processes_compute_once(tmp_path):
    log = tmp_path / "computes.log"
    cmd = [sys.executable, "-c", WORKER, str(tmp_path / "cache"), str(log)]
    procs = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True,
                              env={"PYTHONPATH": str(REPO), "PATH": ""}) for _ in range(2)]
    outputs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert len(log.read_text().splitlines()) == 1
    assert outputs[0] == outputs[1] and outputs[0].startswith("made by")
