"""The edges a new user reaches (issue 26): an unreachable or unwritable store, undecodable images, a
single-class tree, a bad launcher setting, a weights file that is not a state dict, an image count
larger than the data, command-line grammar slips and typos; sweeps that fail or die leave no run
RUNNING; the API applies the fault settings a job applies."""
import http.server
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import pytest
import torch
from filelock import FileLock
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf, open_dict
from torch import nn

from fitact_pipeline import measure_resilience, tracking
from fitact_pipeline.callbacks import MLflowSweepCallback
from fitact_pipeline.data import ImageFolderDataModule
from fitact_pipeline.faults import FAULT_MODELS, FORMATS
from fitact_pipeline.models.sources import load_state_file, weights_file
from fitact_pipeline.store_check import check_store
from fitact_pipeline.validate import CONF_DIR, ConfigError, preflight

ROOT = Path(__file__).resolve().parent.parent
A_FILE = ROOT / "pyproject.toml"  # a path under a file is a folder nobody can create


def refused(argv, fragment):
    with pytest.raises(ConfigError) as err:
        preflight(argv)
    message = str(err.value)
    assert fragment in message and "\n" not in message, message
    return message


# ------------------------------------------------------------------------------------------ the store

def test_an_unreachable_tracking_server_is_refused_within_seconds():
    started = time.perf_counter()
    refused(["tracking.uri=http://127.0.0.1:9"],
            "tracking.uri='http://127.0.0.1:9' is not allowed; no tracking server answers there within 3 s")
    assert time.perf_counter() - started < 60  # composing the config dominates; MLflow's retries took ~8 min


def test_a_store_that_cannot_be_written_is_refused_and_nothing_is_created(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    refused([f"tracking.root={blocker}/mlruns"], f"tracking.root='{blocker}/mlruns' is not allowed; '{blocker}' is a file")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        check_store(OmegaConf.create({"uri": None, "root": str(blocker / "deeper" / "mlruns")}))
    check_store(OmegaConf.create({"uri": None, "root": str(tmp_path / "new" / "mlruns")}))
    assert not (tmp_path / "new").exists()  # checked, not created


@pytest.mark.parametrize("code", [200, 404, 403])
def test_any_answer_of_a_server_passes_but_a_refusal(tmp_path, code):
    """A server that answers (an MLflow server says OK on /health; a proxy may say 404) passes within
    the timeout; one that refuses access names the credentials to set."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(code)
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args):
            pass
    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    cfg = OmegaConf.create({"uri": f"http://127.0.0.1:{server.server_port}", "root": "unused"})
    try:
        if code == 403:
            with pytest.raises(ConfigError, match=r"the server refuses access \(HTTP 403\): set MLFLOW_TRACKING_USERNAME"):
                check_store(cfg, str(tmp_path / "cache"))
        else:
            check_store(cfg, str(tmp_path / "cache"))
    finally:
        server.shutdown()
        server.server_close()


# ------------------------------------------------------------------------------------ ImageFolder trees

def _tree(root: Path, classes=("a", "b"), per_class=3):
    from PIL import Image

    for split in ("train", "test"):
        for i, cls in enumerate(classes):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for j in range(per_class):
                Image.new("RGB", (8, 8), (40 * i, 10 * j, 0)).save(root / split / cls / f"{j}.png")
    return root


def test_a_zero_byte_image_is_named_before_any_work(tmp_path):
    root = _tree(tmp_path)
    (root / "train" / "b" / "empty.png").write_bytes(b"")
    refused(["dataset=imagefolder", f"dataset.root={root}", "dataset.val_size=1"],
            "has 1 empty (0-byte) image file(s): train/b/empty.png; remove or replace them")


def test_an_undecodable_image_is_named_when_the_tree_is_decoded(tmp_path):
    root = _tree(tmp_path)
    (root / "test" / "a" / "broken.png").write_bytes(b"this is not a png")
    (root / "train" / "a" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")  # the first image too
    dm = ImageFolderDataModule(str(root), cache_dir=str(tmp_path / "cache"), val_size=1)
    with pytest.raises(ConfigError) as err:
        dm.setup()
    message = str(err.value)
    assert "2 file(s) of the ImageFolder tree cannot be decoded" in message and "\n" not in message
    assert "train/a/0.png" in message and "test/a/broken.png" in message
    assert not list((tmp_path / "cache").glob("*.pt"))  # nothing cached from a broken tree


def test_a_single_class_tree_is_refused(tmp_path):
    root = _tree(tmp_path, classes=("only",))
    refused(["dataset=imagefolder", f"dataset.root={root}"],
            "has one class with images under train/ ('only'): a classifier needs at least two class folders")


# ----------------------------------------------------------------------------- launcher, weights, counts

@pytest.mark.parametrize("argv, fragment", [
    (["-m", "hydra/launcher=local_parallel", "hydra.launcher.n_jobs=0"],
     "hydra.launcher.n_jobs=0 is not allowed; expected the number of parallel jobs, an integer >= 1"),
    (["-m", "hydra/launcher=local_parallel", "hydra.launcher.backend=dask"],
     "hydra.launcher.backend='dask' is not allowed; choose one of: loky, multiprocessing, threading"),
    (["-m", "hydra/launcher=local_parallel", "hydra.launcher.njobs=2"],
     "unknown config option 'hydra.launcher.njobs' (did you mean hydra.launcher.n_jobs?)"),
    (["-m", "hydra/launcher=slurm", "hydra.launcher.nodes=0"], "hydra.launcher.nodes=0 is not allowed"),
    (["-m", "hydra/launcher=slurm", "hydra.launcher.nodes=abc"], "cannot set hydra.launcher.nodes=abc"),
    (["-m", "hydra/launcher=paralel"], "unknown hydra/launcher 'paralel'"),
])
def test_every_launcher_setting_is_checked(argv, fragment):
    refused(argv, fragment)


def test_a_weights_file_that_is_not_a_state_dict_is_one_line(tmp_path):
    text = tmp_path / "weights.pt"
    text.write_text("not weights\n")
    with pytest.raises(ConfigError, match=r"model.weights='.*weights.pt' is not allowed; it is not a state-dict file"):
        weights_file(str(text), "model.weights")
    torch.save([torch.ones(2)], tmp_path / "list.pt")
    with pytest.raises(ConfigError, match="it holds a list, not a state dict"):
        load_state_file(tmp_path / "list.pt")
    torch.save({"w": torch.ones(2), "epoch": 3}, tmp_path / "mixed.pt")
    with pytest.raises(ConfigError, match="'epoch' holds a int, not a tensor"):
        load_state_file(tmp_path / "mixed.pt")
    refused(["model=torchvision", "model.arch=resnet18", f"model.weights={text}"], "is not a state-dict file")


@pytest.mark.parametrize("argv, fragment", [
    (["campaign.design=nested", "campaign.images_per_trial=1000"],
     "campaign.images_per_trial=1000 is not allowed; the evaluation pool (campaign.eval_images=all of the test "
     "split) has 360 images; give a number <= 360, or auto"),
    (["campaign.eval_images=2000"], "campaign.eval_images=2000 is not allowed; the test split has 360 images"),
    (["campaign.eval_split=val", "campaign.eval_images=301"], "the val split has 300 images"),
    (["profile_images=5000"], "profile_images=5000 is not allowed; the training split has 1137 images"),
    (["+dataset.train_subset=2000"], "dataset.train_subset=2000 is not allowed"),
    (["dataset=cifar10", "campaign.eval_images=20000"], "the test split has 10000 images"),
    (["protection=proact", "protection.progressive.val_images=1000"],
     "protection.progressive.val_images=1000 is not allowed; the validation split has 300 images"),
])
def test_no_requested_count_is_silently_reduced(argv, fragment):
    refused(argv, fragment)


def test_counts_up_to_the_data_pass_and_protection_defaults_are_reported(capsys):
    preflight(["campaign.eval_images=360", "campaign.design=nested", "campaign.images_per_trial=360"])
    preflight(["protection=proact"])
    assert "note: protection.progressive.val_images=1000 (the default of protection=proact) is more than the 300 " \
           "validation images" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- the command line

@pytest.mark.parametrize("argv, fragment", [
    (["-m", "protection=none,ranger,"], "'protection=none,ranger,' ends with a comma: a sweep lists its values "
                                        "separated by commas, none after the last (e.g. protection=none,ranger)"),
    (["dataset.root=/my", "data"], "'data' is not an override (key=value): if it continues the value of "
                                   "'dataset.root=/my', the shell split that value at a space"),
    (["campaign.rates=[1e-5"], "has an unclosed bracket"),
    (["campain.trials=3"], "unknown config option 'campain.trials' (did you mean campaign.trials?)"),
    (["campaign.trails=3"], "unknown config option 'campaign.trails' (did you mean campaign.trials?)"),
    (["protection=fitactt"], "unknown protection 'fitactt' (did you mean fitact?)"),
    (["modle=vgg16"], "unknown config option 'modle' (did you mean model?)"),
])
def test_command_line_slips_get_the_fix(argv, fragment):
    refused(argv, fragment)


@pytest.mark.parametrize("argv, fragment", [  # found trying inputs as a new user would
    (["seed=-1"], "seed=-1 is not allowed; expected an integer >= 0 and <= 4294967295"),
    ([f"cache_dir={A_FILE}/cache"], f"cache_dir='{A_FILE}/cache' is not allowed; '{A_FILE}' is a file"),
    ([f"figures_dir={A_FILE}/figures"], f"figures_dir='{A_FILE}/figures' is not allowed"),
    (["campaign.rates=1e-5,1e-4"], "campaign.rates=1e-5,1e-4 lists several values, which is a sweep: add -m to run one "
                                   "job per value, or write a list for one job (campaign.rates=[1e-5,1e-4])"),
    (["-m", "hydra.launcher.n_jobs=2"], "it is a setting of hydra/launcher=local_parallel: add hydra/launcher="
                                        "local_parallel to the command line"),
])
def test_more_edges_are_one_line(argv, fragment):
    refused(argv, fragment)


def test_a_run_that_never_leaves_its_warmup_is_reported(capsys):
    preflight(["train.epochs=1"])
    assert "note: train.warmup_epochs=1 >= train.epochs=1: the whole training is the learning-rate warm-up" \
        in capsys.readouterr().err


# ------------------------------------------------------------------------------------ no stray RUNNING

def _hydra_cfg(tmp_path, *overrides):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"tracking.root={tmp_path}/mlruns", f"cache_dir={tmp_path}/cache",
                                           f"hydra.sweep.dir={tmp_path}/sweep", *overrides], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


def _statuses(root: Path) -> dict[str, str]:
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    return {r.info.run_id: r.info.status for e in client.search_experiments()
            for r in client.search_runs([e.experiment_id])}


def test_a_sweep_whose_parent_cannot_be_opened_stops_on_one_line(tmp_path, capsys, monkeypatch):
    cfg = _hydra_cfg(tmp_path)

    def broken(*_args, **_kwargs):
        raise RuntimeError("database is locked\nsecond line")
    monkeypatch.setattr(tracking, "open_parent_run", broken)
    with pytest.raises(SystemExit) as stop:
        MLflowSweepCallback().on_multirun_start(cfg)
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: the sweep's MLflow parent run could not be opened in the store ({tmp_path}/mlruns): database is locked"]


@pytest.mark.slow  # a small subprocess holds the locks of a live launcher and job
def test_runs_of_dead_processes_are_killed_at_the_next_launch_and_live_ones_kept(tmp_path):
    """A launcher or job killed with SIGKILL cannot close its run: the next launch does, for sweep
    parents whose launcher holds no live lock and job runs whose job holds no claim."""
    cfg = _hydra_cfg(tmp_path)
    exp = tracking.ensure_store(cfg.tracking)
    client = MlflowClient(mlflow.get_tracking_uri())
    runs = {name: client.create_run(exp, tags=tags).info.run_id for name, tags in (
        ("dead sweep", {"sweep_key": "dead", "run_kind": "sweep"}), ("live sweep", {"sweep_key": "alive", "run_kind": "sweep"}),
        ("dead job", {"job_key": "deadjob", "run_kind": "job"}), ("live job", {"job_key": "livejob", "run_kind": "job"}),
        ("api run", {"source": "fitact_pipeline.api"}))}
    claims = tracking.claims_dir(cfg.tracking, cfg.cache_dir)
    locks = [str(claims / "sweep-live-alive-1.lock"), str(claims / "livejob.lock")]  # held by a live process
    holder = subprocess.Popen([sys.executable, "-c", f"from filelock import FileLock; ls = [FileLock(p) for p in {locks!r}]; "
                               "[l.acquire() for l in ls]; print('held', flush=True); import time; time.sleep(120)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        parent = tracking.open_parent_run(cfg.tracking, cfg.cache_dir, "new", tmp_path / "sweep", "sweep")
        status = _statuses(tmp_path / "mlruns")
        assert {name: status[run] for name, run in runs.items()} == {
            "dead sweep": "KILLED", "live sweep": "RUNNING", "dead job": "KILLED", "live job": "RUNNING",
            "api run": "RUNNING"}  # not a pipeline run: left alone
        assert status[parent] == "RUNNING"
    finally:
        holder.kill()
        holder.wait()
        tracking.release_sweep("new")
    FileLock(locks[0]).acquire(timeout=5)  # the holder is gone: its locks are free


@pytest.mark.slow
def test_a_sweep_whose_first_job_fails_leaves_no_run_running(tmp_path):
    """The tree passes preflight (its broken image is not empty) and fails when the job decodes it:
    the sweep stops, and its parent run ends FAILED, not RUNNING."""
    root = _tree(tmp_path / "tree")
    (root / "test" / "b" / "broken.png").write_bytes(b"not a png at all")
    proc = subprocess.run(
        [sys.executable, "-m", "fitact_pipeline", "-m", "dataset=imagefolder", f"dataset.root={root}",
         "dataset.val_size=1", "protection=none,ranger", "threads=1", "progress_bar=false",
         f"tracking.root={tmp_path}/mlruns", f"cache_dir={tmp_path}/cache", f"hydra.sweep.dir={tmp_path}/sweep",
         f"figures_dir={tmp_path}/figures"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0 and "broken.png" in proc.stderr + proc.stdout
    status = _statuses(tmp_path / "mlruns")
    assert status and "RUNNING" not in status.values() and "FAILED" in status.values(), status


# ------------------------------------------------------------------------------ API = CLI fault settings

FIXED = {"fmt": "fixed", "word_bits": 16, "frac_bits": 8}


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, one_thread):
    """One CLI job (in process) on digits with a Q7.8 fixed-point datapath, and its logged trials."""
    from fitact_pipeline.pipeline import run_job

    tmp = tmp_path_factory.mktemp("cli")
    cfg = _hydra_cfg(tmp, "protection=ranger", "train.epochs=2", "profile_images=200", "campaign.rates=[3e-4]",
                     "campaign.trials=4", "campaign.eval_images=120", "progress_bar=false", "threads=1",
                     "device=cpu", *[f"faults.datapath.{k}={v}" for k, v in FIXED.items()])
    with open_dict(cfg):
        del cfg["hydra"]  # a job's config has no hydra node (HydraConfig holds it)
    summary = run_job(cfg)
    client = MlflowClient(mlflow.get_tracking_uri())
    table = json.loads(Path(client.download_artifacts(summary["run_id"], "trials.json", str(tmp))).read_text())
    accuracy = [row[table["columns"].index("accuracy")] for row in table["data"]]
    return cfg, client.get_run(summary["run_id"]).data.metrics["clean_accuracy"], accuracy


@pytest.mark.slow  # its fixture trains a job (in process)
def test_measure_resilience_with_a_datapath_gives_the_clis_numbers(cli_run):
    from hydra.utils import instantiate

    from fitact_pipeline.counts import eval_count
    from fitact_pipeline.keys import all_keys
    from fitact_pipeline.stages import prepare_protected

    cfg, clean, per_trial = cli_run
    dm = instantiate(cfg.dataset)
    prepared = prepare_protected(cfg, dm, torch.device("cpu"), all_keys(cfg, dm, torch.device("cpu")))  # cached
    images, labels = dm.eval_tensors("test", eval_count(cfg.campaign.eval_images), cfg.campaign.seed)
    kwargs = dict(rates=[3e-4], trials=4, seed=cfg.campaign.seed, batch_size=cfg.campaign.batch_size)
    api = measure_resilience(prepared.protected, (images, labels), faults={"datapath": FIXED}, **kwargs)
    assert api.clean_accuracy == clean
    assert [t["accuracy"] for t in api.trials] == per_trial
    without = measure_resilience(prepared.protected, (images, labels), **kwargs)  # float32 datapath
    assert [t["accuracy"] for t in without.trials] != per_trial  # the datapath is what made them equal


def test_activation_faults_evaluate_the_weights_stored_in_faults_fmt():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))
    faults = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "faults" / "q15_16.yaml"), resolve=True)
    faults.update(model="activation", fmt="fixed", word_bits=16, frac_bits=4)
    before = [p.detach().clone() for p in model.parameters()]
    injector = FAULT_MODELS["activation"].build(model, faults)
    codec = FORMATS["fixed"].codec(16, 4)
    for old, new in zip(before, model.parameters()):
        assert torch.equal(new.detach(), codec.quantize(old)) and not torch.equal(new.detach(), old)
    assert injector.fault_space["weights_format"] == codec.describe()
    x = torch.randn(20, 5)
    clean = model(x)  # no trial active: the clean stored model
    memory = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))
    for p, b in zip(memory.parameters(), before):
        p.data.copy_(b)
    FAULT_MODELS["memory"].build(memory, {**faults, "model": "memory"})
    assert torch.equal(clean, memory(x))  # the same stored weights the memory campaigns evaluate
