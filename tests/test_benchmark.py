"""tools/benchmark.py runs end to end and reports ratios against its baseline (no timing asserted)."""
import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def load_benchmark():
    spec = importlib.util.spec_from_file_location("benchmark", REPO / "tools" / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_benchmark_table_against_mask_rcnn(tmp_path, capsys):
    benchmark = load_benchmark()
    rows = benchmark.main([
        "--config-file", str(REPO / "configs/FCOS-Detection/R_50_1x.yaml"), "--size", "96", "--max-size", "128",
        "--warmup", "0", "--runs", "1", "--train-iters", "1", "--batch-size", "1",
        "--json", str(tmp_path / "bench.json"),
    ])
    assert [r["model"] for r in rows] == ["R_50_1x", "Mask R-CNN R50-FPN (Detectron2)"]
    # Both carry the reference schemas' deterministic weights, so both do real post-processing.
    assert all(r["weights"].startswith("reference") for r in rows)
    assert all(r["infer_ms"] > 0 and r["train_s_per_iter"] > 0 for r in rows)
    table = capsys.readouterr().out.splitlines()
    baseline_line = next(line for line in table if line.startswith("| Mask R-CNN"))
    assert baseline_line.count("| 1.00") == 2  # the baseline's inference and training ratios
    assert (tmp_path / "bench.json").is_file()


def test_schema_is_guessed_from_the_config_path():
    benchmark = load_benchmark()
    assert benchmark.guess_schema("configs/FCOS-Detection/R_50_1x.yaml") == "fcos_R_50_1x"
    assert benchmark.reference_state_dict("no_such_schema") is None
