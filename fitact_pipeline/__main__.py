"""`python -m fitact_pipeline [overrides]`: one job, or a sweep with `-m` (Hydra multirun)."""
from __future__ import annotations

import logging
import signal
import sys

import hydra
from omegaconf import DictConfig

from .callbacks import close_open_sweep
from .validate import CONF_DIR, ConfigError, preflight


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def job(cfg: DictConfig) -> dict | None:
    from .pipeline import run_job  # heavy imports only once the config is known to be good

    try:
        return run_job(cfg)
    except ConfigError as exc:
        logging.getLogger("fitact_pipeline").error("error: %s", exc)
        raise SystemExit(2) from None


def _terminated(signum, _frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # unwinds like Ctrl-C: the sweep's parent ends KILLED


def main() -> None:
    # Check every override and every sweep job before Hydra starts anything: a typo must not cost
    # a training run, and Hydra's own messages span several lines.
    try:
        preflight(sys.argv[1:])
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    signal.signal(signal.SIGTERM, _terminated)
    status = "FAILED"  # a sweep still open when job() returns or raises did not end through on_multirun_end
    try:
        job()
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        close_open_sweep(status)


if __name__ == "__main__":
    main()
