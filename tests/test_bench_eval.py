"""``rdbench bench eval``: the peak memory row (evaluate in a child process, its own peak)."""

from __future__ import annotations

import torch

from analysis import bench


def test_evaluate_memory_row_measures_a_six_run_group_in_a_child(capsys) -> None:
    """--quick: 6 mlp1 runs on the tiny dataset's cv-8192 (26 train, 486 test images),
    trained and evaluated in a temporary directory it says it uses; the peak is the
    evaluating child's: more than torch alone, far below the 2 GB target."""
    rows = bench.bench_evaluate_memory([torch.device("cpu")], quick=True)
    assert len(rows) == 1
    row = rows[0]
    assert (row["runs"], row["split"], row["test_images"]) == (6, "cv-8192", 486)
    assert 100 * 2**20 < row["peak_rss_bytes"] < 2 * 2**30
    said = capsys.readouterr()
    assert "(removed afterwards)" in said.err and not said.out  # stdout is for the tables
    table = bench.markdown({"devices": {"cpu": "CPU"}, "rate_decomposition": [],
                            "throughput": [], "evaluate_memory": rows})
    assert "| CPU | 6 mlp1 runs on cv-8192 | 486 |" in table
