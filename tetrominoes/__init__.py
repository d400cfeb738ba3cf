"""The Tetrominoes dataset of Bozkurt et al. 2021: render, splits, generate, load."""
