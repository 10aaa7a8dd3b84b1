"""CSV fault lists (faults/faultlist.py): a campaign's maps written as a list and replayed give the
same trials; the columns as documented; a list that does not fit the model is refused in one line."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from torch import nn

from fitact_pipeline import measure_resilience, write_fault_list
from fitact_pipeline.faults import FaultInjector, ReplayInjector, read_fault_list, run_campaign
from fitact_pipeline.faults import write_fault_list as write_maps
from fitact_pipeline.faults.faultlist import FaultListError
from fitact_pipeline.faults.sampler import Bursts, StuckBits
from fitact_pipeline.registry import ConfigError
from fitact_pipeline.structure import skeleton
from fitact_pipeline.validate import CONF_DIR, preflight

RATES = [1e-5, 1e-3, 1e-2]
ROOT = Path(__file__).resolve().parent.parent


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 40), nn.ReLU(),
                         nn.Linear(40, 3)).eval()


@pytest.fixture(scope="module")
def data():
    x = torch.randn(80, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    return x, tiny_model()(x).argmax(1)


@pytest.mark.parametrize("faults", [
    "q15_16",
    {"model": "stuck_at", "fmt": "fp8_e4m3", "word_bits": 8},
    {"model": "burst", "fmt": "mxfp4", "word_bits": 4, "targets": ["weight", "bias", "scale"]},
], ids=["memory-q15_16", "stuck_at-fp8", "burst-mxfp4"])
def test_a_campaigns_maps_as_a_list_replay_to_identical_trials(faults, data, tmp_path, one_thread):
    model = tiny_model()
    sampled = measure_resilience(model, data, RATES, trials=3, seed=4, faults=faults)
    path = write_fault_list(model, tmp_path / "faults.csv", RATES, trials=3, seed=4, faults=faults)
    listed = dict(faults) if isinstance(faults, dict) else {}
    replayed = measure_resilience(model, data, faults={**listed, "list": str(path)})
    assert replayed.trials == sampled.trials  # accuracy, faults, bits changed, per tensor, per bit position
    assert replayed.fault_space["fault_list"] == str(path)
    assert sum(t["faults"] for t in sampled.trials) > 100 and len(sampled.trials) == 9


def test_replay_with_several_maps_per_pass(data, tmp_path, one_thread):
    x, y = data
    model = tiny_model()
    injector = FaultInjector(model, fmt="int4", targets=("weight", "bias", "scale"))
    sampled = run_campaign(model, injector, x, y, RATES, 4, seed=1, progress=False, maps_per_pass=4)
    maps = [injector.sample(r, 1, t) for r in RATES for t in range(4)]
    replay = ReplayInjector(injector, read_fault_list(write_maps(maps, tmp_path / "l.csv")))
    again = run_campaign(model, replay, x, y, RATES, 4, seed=99, progress=False, maps_per_pass=4)
    assert [t["accuracy"] for t in again.trials] == [t["accuracy"] for t in sampled.trials]


def rows_of(path) -> list[list[str]]:
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def test_columns_empty_trials_bursts_and_stuck_values(tmp_path):
    model = tiny_model()
    burst = FaultInjector(model, fmt="fixed", sampler=Bursts(3))
    maps = [burst.sample(0.0, 0, 0), burst.sample(0.01, 0, 0)]
    rows = rows_of(write_maps(maps, tmp_path / "burst.csv"))
    assert rows[0] == ["rate", "trial", "tensor", "index", "bit", "length"]
    assert rows[1] == ["0.0", "0", "", "", "", ""]  # a map without faults is one row
    assert len(rows) - 2 == len(maps[1]) // 3 and all(r[5] == "3" and int(r[4]) <= 29 for r in rows[2:])
    stuck = FaultInjector(tiny_model(), fmt="fixed", sampler=StuckBits("mix"))
    fmap = stuck.sample(0.001, 5, 0)
    rows = rows_of(write_maps([fmap], tmp_path / "stuck.csv"))
    assert rows[0][-1] == "value" and {r[5] for r in rows[1:]} == {"0", "1"}
    back = ReplayInjector(stuck, read_fault_list(tmp_path / "stuck.csv")).maps[(0.001, 0)]
    assert back.records == fmap.records and torch.equal(back.values, fmap.values)


def write_rows(path, rows, header=("rate", "trial", "tensor", "index", "bit")):
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows([list(header), *rows])
    return path


@pytest.mark.parametrize("rows, header, fmt, message", [
    ([[0.1, 0, "0.weight", 0, 0], [0.1, 0, "9.weight", 0, 0]], None, "fixed",
     "row 3: tensor '9.weight' is not in the fault space"),
    ([[0.1, 0, "0.weight", 216, 0]], None, "fixed", "row 2: index 216 is outside '0.weight' (216 elements)"),
    ([[0.1, 0, "0.weight", 3, 8]], None, "fp8_e4m3", "row 2: bit 8 does not fit the 8-bit words of '0.weight'"),
    ([[0.1, 0, "0.weight", 3, 30, 3]], ("rate", "trial", "tensor", "index", "bit", "length"), "fixed",
     "row 2: bit 30 length 3 does not fit the 32-bit words"),
    ([[0.1, 0, "0.weight", 3, 1], [0.1, 0, "0.weight", 3, 1]], None, "fixed", "a bit is listed twice"),
    ([[0.1, 0, "0.weight", 3, 1, 2]], ("rate", "trial", "tensor", "index", "bit", "value"), "fixed",
     "row 2: stuck value 2 is not allowed"),
    ([[0.1, 0, "0.weight", 3]], ("rate", "trial", "tensor", "index"), "fixed", "has header 'rate,trial,tensor,index'"),
    ([[0.1, 0, "0.weight", "x", 1]], None, "fixed", "row 2: '0.1,0,0.weight,x,1' is not rate,trial,tensor then"),
    ([[0.1, 1, "0.weight", 3, 1]], None, "fixed", "rate 0.1 has trials [1]; every rate needs trials 0..0"),
    ([[0.1, 0, "0.weight", 3, 1], [0.2, 0, "", "", ""], [0.2, 1, "", "", ""]], None, "fixed",
     "rate 0.2 has trials [0, 1]; every rate needs trials 0..0"),
])
def test_a_list_that_does_not_fit_is_refused_in_one_line(rows, header, fmt, message, tmp_path):
    path = write_rows(tmp_path / "bad.csv", rows, header or ("rate", "trial", "tensor", "index", "bit"))
    sampler = {"length": Bursts(3), "value": StuckBits(1)}.get((header or ("",))[-1])
    injector = FaultInjector(tiny_model(), fmt=fmt, sampler=sampler)
    with pytest.raises(FaultListError) as err:
        ReplayInjector(injector, read_fault_list(path))
    assert message in str(err.value) and "\n" not in str(err.value)
    assert isinstance(err.value, ConfigError)


def test_the_list_must_be_of_the_configured_fault_model(data, tmp_path):
    path = write_rows(tmp_path / "stuck.csv", [[0.1, 0, "0.weight", 3, 1, 1]],
                      ("rate", "trial", "tensor", "index", "bit", "value"))
    with pytest.raises(ConfigError, match="is a stuck_at list; set faults.model=stuck_at"):
        measure_resilience(tiny_model(), data, faults={"list": str(path)})
    with pytest.raises(ConfigError, match="not allowed with faults.model='activation'"):
        measure_resilience(tiny_model(), data, faults={"list": str(path), "model": "activation"})
    with pytest.raises(ConfigError, match="is not a file"):
        measure_resilience(tiny_model(), data, faults={"list": str(tmp_path / "missing.csv")})


def test_cli_refuses_a_list_naming_a_tensor_the_job_does_not_have(tmp_path, one_thread):
    path = write_rows(tmp_path / "l.csv", [[1e-4, 0, "features.0.weight", 0, 3]])
    with pytest.raises(ConfigError) as err:
        preflight(["experiment=quickstart", f"faults.list={path}"])
    assert "row 2: tensor 'features.0.weight' is not in the fault space" in str(err.value)
    with pytest.raises(ConfigError, match="campaign.adaptive.enabled=true"):
        preflight(["experiment=quickstart", f"faults.list={path}", "campaign.adaptive.enabled=true"])


def cli_job(tmp, *overrides) -> None:
    cmd = [sys.executable, "-m", "fitact_pipeline", "experiment=quickstart", "protection=none", "train.epochs=1",
           "campaign.eval_images=60", "campaign.seed=7", "overhead.enabled=false", "progress_bar=false", "threads=1",
           f"tracking.root={tmp}/mlruns", f"cache_dir={tmp}/cache", f"figures_dir={tmp}/figures", *overrides]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
def test_cli_replays_a_list_as_the_campaign_it_was_drawn_from(tmp_path):
    """A sampled job, then a job replaying a list of the same maps (written through the job's own
    skeleton, whose tensor names and shapes are the trained model's): the same trials."""
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=quickstart", "protection=none"])
    path = write_fault_list(skeleton(cfg)[1], tmp_path / "l.csv", [1e-4, 3e-4], trials=2, seed=7)
    cli_job(tmp_path, "campaign.rates=[1e-4,3e-4]", "campaign.trials=2")
    cli_job(tmp_path, f"faults.list={path}")
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("quickstart").experiment_id])
    assert len(runs) == 2 and len({r.data.tags["job_key"] for r in runs}) == 2  # the list is in the key
    trials = [json.loads(Path(client.download_artifacts(r.info.run_id, "trials.json", str(tmp_path))).read_text())
              for r in runs]
    assert trials[0] == trials[1] and len(trials[0]["data"]) == 4
