"""Datasets for M3: the synthetic M3-Shapes visual-QA set (`llava.data.shapes`)."""
