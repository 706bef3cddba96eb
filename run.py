"""Entry point: `python run.py +experiment=beauty_cold` (no arguments: the offline demo)."""

import logging

import hydra
from omegaconf import DictConfig

import reccocktail  # noqa: F401  (registers the config resolvers, e.g. ml100k_dir)

log = logging.getLogger("reccocktail.run")


@hydra.main(version_base="1.3", config_path="conf", config_name="run")
def main(cfg: DictConfig) -> float | None:
    from reccocktail.pipeline import optimized_value, run

    try:
        # Sweepers (Optuna) maximise what main returns: the summary value at `optimized_metric`.
        return optimized_value(cfg, run(cfg))
    except Exception as err:
        # Hydra reports a job's error on the console once the job is over, when its run.log is
        # closed: write it there too, so the failed job of a multirun says why in its own folder
        log.error("run failed: %s: %s", type(err).__name__, err, exc_info=True)
        raise


if __name__ == "__main__":
    main()
