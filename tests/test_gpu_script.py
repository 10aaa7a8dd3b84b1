"""benchmarks/gpu_paper_scale.py at tiny scale on the CPU: a pack of a few JPEGs per class, one model
trained, protected and put through paired campaigns per bit and per word, every record written."""
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
DATA = Path("/work/shared/data/cifar10")


@pytest.mark.slow
@pytest.mark.skipif(not (DATA / "train").is_dir(), reason="needs the CIFAR-10 copy")
def test_tiny_run_writes_every_record_and_resumes_from_its_checkpoint(tmp_path):
    import gpu_paper_scale
    import gpu_summary
    import pack_cifar_copy

    counts = pack_cifar_copy.pack(DATA, tmp_path / "pack.npz", per_class=12)
    assert counts["train"] == counts["test"] == 120
    argv = ["--pack", str(tmp_path / "pack.npz"), "--out", str(tmp_path / "out"), "--ckpt", str(tmp_path / "ckpt"),
            "--tiny", "--models", "alexnet", "--workers", "1", "--device", "cpu"]
    assert gpu_paper_scale.main(argv) == 0
    records = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    kinds = [r["kind"] for r in records]
    assert kinds[0] == "data" and kinds[-1] == "done" and "error" not in kinds
    campaigns = [r for r in records if r["kind"] == "campaign"]
    assert {(r["protection"], r["unit"]) for r in campaigns} == {(p, u) for p in gpu_paper_scale.PROTECTIONS
                                                                for u in gpu_paper_scale.UNITS}
    for r in campaigns:
        assert sorted(map(float, r["per_rate"])) == list(gpu_paper_scale.RATES[-2:])
        assert all(len(v) == 4 for v in r["trials"].values())
    # per word far fewer faults than per bit at one rate
    by = {(r["protection"], r["unit"]): r["mean_faults"] for r in campaigns}
    assert by[("none", "word")]["3e-05"] < by[("none", "bit")]["3e-05"]
    # paired maps: Ranger's fault space is none's plus its bounds, so never fewer faults
    assert all(by[("ranger", "bit")][r] >= by[("none", "bit")][r] for r in by[("none", "bit")])
    assert any(r["kind"] == "paired" for r in records)
    table = gpu_summary.tables(records)
    assert "| alexnet | fitact | per word | 4 x 120 |" in table and "| alexnet |" in table.splitlines()[2]
    # a rerun loads the finished model instead of training it again
    assert gpu_paper_scale.main(argv) == 0
    train = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()
             if '"kind": "train"' in line]
    assert [t["resumed"] for t in train] == [False, True]
