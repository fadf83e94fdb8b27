"""Benchmark scorers: pure functions that turn answers files into metrics, one module per benchmark.

Every module is also a command line, `python -m llava.eval.scoring.<name>`; see docs/Evaluation.md
for the file formats each one reads and writes.
"""
