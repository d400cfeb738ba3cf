"""Analysis of trained runs: estimators, evaluation, figures, tables, report."""
