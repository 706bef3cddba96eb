"""RecCocktail: LLM-based recommendation from a mix of a general and a domain-specific LoRA."""

from omegaconf import OmegaConf

from reccocktail.data import fetch

__version__ = "0.1.0"


def _ml100k_dir(data_root: str | None, cache_dir: str) -> str:
    # Called when the key is read, not when a config is composed: resolving may fetch ML-100k.
    return fetch.ml100k_dir(data_root, cache_dir)


# Config resolvers, registered on import so that run.py, tests and notebooks all see them.
OmegaConf.register_new_resolver("ml100k_dir", _ml100k_dir, replace=True)
