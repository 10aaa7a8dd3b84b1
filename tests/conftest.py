"""Fixtures shared by the test modules."""
import copy
import logging

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
