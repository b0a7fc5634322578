"""Evaluation without Paddle: distances, the metrics' definitions, the evaluator of named metrics, the report
and the pictures (see docs/evaluation.md)."""
