"""Train β-VAE grids at scale: models, objectives, vectorised trainer, runner."""
