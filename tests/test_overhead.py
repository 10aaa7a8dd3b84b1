"""The shared inference-timing helpers behind Table I and benchmarks/overhead.py."""
import torch
from torch import nn

from fitact_pipeline.overhead import compare_inference, model_bytes, paired_ratios


class _Recorder(nn.Module):
    def __init__(self, name: str, log: list):
        super().__init__()
        self.name, self.log = name, log
        self.weight = nn.Parameter(torch.zeros(3))

    def forward(self, x):
        self.log.append(self.name)
        return x


def test_paired_ratios_run_each_pair_back_to_back_in_abba_order():
    log: list[str] = []
    ratios = paired_ratios(_Recorder("ref", log), _Recorder("prot", log), torch.zeros(2), pairs=4)
    assert len(ratios) == 4 and all(r > -1 for r in ratios)  # a ratio of two positive times, minus 1
    assert log == ["ref", "prot", "prot", "ref", "ref", "prot", "prot", "ref"]


def test_model_bytes_counts_parameters_and_buffers():
    m = nn.BatchNorm1d(4)  # 8 parameters + 8 running stats + 1 int64 counter
    assert model_bytes(m) == 16 * 4 + 8


def test_compare_inference_runs_every_model_once_per_round_in_a_seeded_order():
    def rounds():
        log: list[str] = []
        models = {n: _Recorder(n, log) for n in "abcd"}
        res = compare_inference(models, torch.zeros(2), repeats=6, warmup=1)
        assert set(res) == set("abcd") and all(r["ms"] > 0 and r["bytes"] == 12 for r in res.values())
        timed = log[4:]  # after one warm-up pass each
        return [tuple(timed[i:i + 4]) for i in range(0, 24, 4)]

    first = rounds()
    assert all(sorted(r) == list("abcd") for r in first)
    # no model always follows the same one (what a fixed order did), and the order is reproducible
    assert len(set(first)) > 1 and rounds() == first
