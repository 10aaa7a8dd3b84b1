"""Fixtures shared by the test modules."""
import contextlib
import copy
import importlib.util
import logging
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Small tensors on a shared, oversubscribed CPU: OpenMP threads spin-waiting on each other make
    such tests several times slower than one thread. Restored afterwards for other modules."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def benchmark_script():
    """``load(name)``: a script of benchmarks/ (scripts, not a package) as a module."""
    def load(name: str):
        path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return load


def _folded_small_cnn():
    from fitact_pipeline.models import build_model
    from fitact_pipeline.protect import fold_batchnorm

    torch.manual_seed(0)
    model = build_model("small_cnn", 10, 1, 0.5).eval()
    fold_batchnorm(model)
    return model


@pytest.fixture(scope="session")
def folded_small_cnn():
    """A factory of small_cnn at width 0.5 (random weights from seed 0, BatchNorm folded)."""
    return _folded_small_cnn


@pytest.fixture(scope="session")
def small_protected():
    """A factory: ({protection: a copy of the folded small_cnn protected at its profile on the images},
    images, labels) for ``n_images`` random 8x8 images whose labels are the clean predictions with
    every ``every``-th one shifted, so the clean model is right on most images but not all."""
    from fitact_pipeline.protect import profile_activations, protect_model

    def make(n_images: int = 90, every: int = 5, names=("none", "ranger", "fitact")):
        base = _folded_small_cnn()
        images = torch.randn(n_images, 1, 8, 8)
        labels = base(images).argmax(1).detach()
        labels[::every] = (labels[::every] + 1) % 10
        profile = profile_activations(base, images)
        return {name: protect_model(copy.deepcopy(base), name, profile=None if name == "none" else profile)
                for name in names}, images, labels
    return make


@pytest.fixture(scope="session")
def trained_digits():
    """A factory of (set-up digits data module, small_cnn at width 0.5 trained 6 epochs on it, BatchNorm
    not folded); every call returns a fresh copy of the model, so tests may change it."""
    from fitact_pipeline.data import DigitsDataModule
    from fitact_pipeline.models import build_model
    from fitact_pipeline.training import train_baseline

    logging.getLogger("lightning").setLevel(logging.ERROR)
    dm = DigitsDataModule(batch_size=64, seed=0)
    dm.setup("fit")
    model = build_model("small_cnn", 10, 1, 0.5)
    train_baseline(model, dm, {"epochs": 6, "lr": 0.05, "progress_bar": False}, seed=0)
    model.eval()
    return lambda: (dm, copy.deepcopy(model))


@contextlib.contextmanager
def _mlflow_server(backend_store_uri: str, *extra_args: str):
    """An MLflow tracking server on a free localhost port (as docs/tracking.md sets one up for SLURM
    sweeps); yields its URI once /health answers, and stops it afterwards."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                               "--backend-store-uri", backend_store_uri, "--workers", "1", *extra_args],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(uri + "/health", timeout=2)
                break
            except OSError:
                assert time.time() < deadline and server.poll() is None, "mlflow server did not start"
                time.sleep(0.5)
        yield uri
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture
def mlflow_server():
    """``with mlflow_server(backend_store_uri, *extra_args) as uri``: a tracking server for the test."""
    return _mlflow_server
