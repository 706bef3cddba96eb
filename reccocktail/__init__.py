"""RecCocktail: LLM-based recommendation from a mix of a general and a domain-specific LoRA."""

__version__ = "0.1.0"
