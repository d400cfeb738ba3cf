"""rdbench: rate-distortion benchmarking for variational autoencoders.

The work lives in three packages, in pipeline order: ``tetrominoes`` (dataset on disk) →
``benchmark`` (trained runs on disk) → ``analysis`` (metrics, figures, tables). This package
holds only the ``rdbench`` command line and the file helpers all three share.
"""

__version__ = "0.1.0"
