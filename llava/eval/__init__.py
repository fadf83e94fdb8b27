"""Evaluation: answer generation per benchmark and the scorers in `llava.eval.scoring`."""
