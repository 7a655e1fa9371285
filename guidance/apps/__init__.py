"""Hydra entry points: train, train_evaluator, sample, evaluate, tradeoff, main (the one-command study)."""
