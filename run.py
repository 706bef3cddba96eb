"""Entry point: `python run.py +experiment=beauty_cold` (no arguments: the offline demo)."""

import hydra
from omegaconf import DictConfig

import reccocktail  # noqa: F401  (registers the config resolvers, e.g. ml100k_dir)


@hydra.main(version_base="1.3", config_path="conf", config_name="run")
def main(cfg: DictConfig) -> float | None:
    from reccocktail.pipeline import main_task

    # Sweepers (Optuna) maximise what main returns: the summary value at `optimized_metric`.
    return main_task(cfg)


if __name__ == "__main__":
    main()
