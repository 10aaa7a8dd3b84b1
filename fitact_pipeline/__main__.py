"""`python -m fitact_pipeline [overrides]`: one job, or a sweep with `-m` (Hydra multirun)."""
from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from .validate import CONF_DIR, ConfigError, preflight


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def job(cfg: DictConfig) -> dict | None:
    from .pipeline import run_job  # heavy imports only once the config is known to be good

    try:
        return run_job(cfg)
    except ConfigError as exc:
        logging.getLogger("fitact_pipeline").error("error: %s", exc)
        raise SystemExit(2) from None


def main() -> None:
    # Check every override and every sweep job before Hydra starts anything: a typo must not cost
    # a training run, and Hydra's own messages span several lines.
    try:
        preflight(sys.argv[1:])
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    job()


if __name__ == "__main__":
    main()
