"""The LoRA cocktail: mixing operators (`mix`), entropy-guided λ (`entropy`) and the `mix` stage
(`stage`). Which test users give the unlabeled λ prompts is a data concern:
`reccocktail.data.selection`."""
