"""Entry point: `python run.py +experiment=beauty_cold` (no arguments: the offline demo)."""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="run")
def main(cfg: DictConfig) -> None:
    from reccocktail.pipeline import run

    run(cfg)


if __name__ == "__main__":
    main()
