"""Baselines scored in the LLM variants' protocol: popularity, BPR-MF, GRU4Rec, SASRec,
FMLP-Rec (ID-based) and a UniSRec-style text model, all trained on the data stage's training
sequences and scored on the very same stored candidates. The LLM baselines (zero-shot, TALLRec =
RecCocktail-S, second-round, few-shot) are variants of the tuning/eval stages, not here."""
