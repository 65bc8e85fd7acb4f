"""Evaluation: pure correlation metrics and validation reports."""
