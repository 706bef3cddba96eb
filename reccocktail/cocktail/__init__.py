"""The LoRA cocktail: mixing operators (`mix`), entropy-guided λ (`entropy`), unlabeled prompt
choice (`unlabeled`) and the `mix` stage (`stage`)."""
