"""Bad input stops before any job starts, with one line naming the value and what is allowed."""
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from fitact_pipeline.validate import CONF_DIR, ConfigError, check_config, preflight

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("argv, fragment", [
    (["campaign.rates=[1e-5,2.0]"], "campaign.rates=2.0"),
    (["campaign.rates=-0.1"], "[0, 1]"),
    (["campaign.trials=0"], "campaign.trials=0"),
    (["protection=bogus"], "unknown protection 'bogus'; choose one of: clipact, clipact_ft, fitact, fitact_channel, fitact_layer, fitact_noposttrain, gbrelu, none, proact, ranger"),
    (["-m", "protection=none,bogus"], "unknown protection 'bogus'"),
    (["-m", "campaign.rates=1e-5,3.0"], "campaign.rates=3.0"),
    (["no_such_option=1"], "unknown config option 'no_such_option'"),
    (["campaign.no_such=1"], "keys allowed under 'campaign'"),
    (["protection.granularity=pixel"], "choose one of: layer, channel, neuron"),
    (["posttrain.max_accuracy_drop=1.5"], "posttrain.max_accuracy_drop=1.5"),
    (["faults.fmt=int2"], "faults.fmt='int2'"),
    (["faults.frac_bits=40"], "frac_bits"),
    (["model=lenet"], "unknown model 'lenet'"),
    (["campaign.adaptive.enabled=true", "campaign.adaptive.min_trials=50", "campaign.adaptive.max_trials=10"],
     "must be <= campaign.adaptive.max_trials=10"),
])
def test_preflight_rejects_bad_input(argv, fragment):
    with pytest.raises(ConfigError) as err:
        preflight(argv)
    message = str(err.value)
    assert fragment in message
    assert "\n" not in message


def test_preflight_accepts_good_sweeps():
    preflight(["-m", "experiment=quickstart", "protection=none,fitact", "campaign.rates=1e-5,1e-4"])
    preflight(["campaign.rates=1e-5"])  # one rate per job is allowed as a scalar


def test_default_config_is_valid():
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        check_config(compose("config"))


@pytest.mark.slow
def test_cli_bad_rate_is_one_line_and_trains_nothing(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "fitact_pipeline", "campaign.rates=[1.5]",
                           f"cache_dir={tmp_path}/cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == ["error: campaign.rates=1.5 is not allowed; a fault rate (bit error rate) must be in [0, 1]"]
    assert not (tmp_path / "cache").exists()
