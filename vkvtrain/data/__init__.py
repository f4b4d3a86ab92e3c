"""Datasets: perception probe data, BLINK, training sets, and synthetic generators with exact ground truth."""
