"""tools/benchmark.py runs end to end and reports ratios against its baseline (no timing asserted)."""
import importlib.util
import json
import subprocess
import sys
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
        "--warmup", "0", "--runs", "1", "--train-iters", "1", "--batch-size", "1", "--profile-train",
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
    # One profiled training iteration each: a CPU run has no device time, but ops and their host times.
    for r in rows:
        profile = r["train_profile"]
        assert profile["wall_ms"] > 0 and profile["device_busy_ms"] is profile["kernels"] is profile["syncs"] is None
        assert profile["aten_ops"] > 100 and profile["top_device"] == []
        names = [op[0] for op in profile["top_host"]]
        assert 0 < len(names) <= 12 and all(n.startswith("aten::") for n in names)
        assert any("conv" in n for n in names)  # convolutions dominate a CPU training step
    assert sum("one training iteration" in line for line in table) == 2
    assert "ratio" in gpu_check_summary(tmp_path / "bench.json", "profile_FCOS-Detection_R_50_1x.json")


def gpu_check_summary(bench_json, name):
    """tools/gpu_check.sh's summary of one benchmark.py json, renamed as the check names it."""
    out = bench_json.parent / "gpu_check"
    out.mkdir()
    bench_json.rename(out / name)
    script = f'source <(sed -n "/^write_summary()/,/^}}/p" tools/gpu_check.sh); PY="{sys.executable}" ' \
             f'OUT_DIR="{out}" write_summary'
    summary = subprocess.run(["bash", "-c", script], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert (out / "bench.json").is_file() and not (out / name).exists()  # merged
    return summary


def test_gpu_check_summarises_a_training_profile(tmp_path):
    """The summary line of a profile file, from a row as benchmark.py writes it."""
    benchmark = load_benchmark()
    rows = [{"model": m, "train_s_per_iter": s, "train_profile": {
        "wall_ms": w, "device_busy_ms": b, "aten_ops": 900, "kernels": 800, "syncs": n, "top_host": [],
        "top_device": []}} for m, s, w, b, n in (("R50_3x", 0.5, 480.0, 60.0, 300), ("Mask R-CNN", 0.1, 95.0, 80.0, 40))]
    args = vars(benchmark.parse_args(["--config-file", "x.yaml", "--device", "cuda", "--size", "160",
                                      "--max-size", "256", "--batch-size", "16", "--profile-train"]))
    (tmp_path / "bench.json").write_text(json.dumps({"args": args, "rows": rows}))
    summary = gpu_check_summary(tmp_path / "bench.json", "profile_SOLOv2_R50_3x.json")
    assert "SOLOv2_R50_3x at 160/256, batch 16 (cuda), training ratio 5.00" in summary
    assert ("ours:       0.500 s/iter, profiled iteration 480 ms: 900 aten ops, device busy 60 ms, 800 kernels, "
            "300 host waits") in summary
    assert ("Mask R-CNN: 0.100 s/iter, profiled iteration 95 ms: 900 aten ops, device busy 80 ms, 800 kernels, "
            "40 host waits") in summary


def test_schema_is_guessed_from_the_config_path():
    benchmark = load_benchmark()
    assert benchmark.guess_schema("configs/FCOS-Detection/R_50_1x.yaml") == "fcos_R_50_1x"
    assert benchmark.reference_state_dict("no_such_schema") is None
