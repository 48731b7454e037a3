"""tools/benchmark_finetune.py: method selection, commands, metrics parsing and the report
(no training: the runs are faked)."""
import importlib.util
import json
import shlex
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("benchmark_finetune", REPO / "tools" / "benchmark_finetune.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_metrics(path, records, mode="w"):
    with open(path, mode) as f:
        for r in records:
            f.write(json.dumps(r) + "\n")  # json.dumps writes NaN as Detectron2's JSONWriter does


TRAIN_RECORD = {"iteration": 9, "time": 2.5, "total_loss": 1.2, "lr": 0.01}
EVAL_RECORD = {"iteration": 10, "bbox/AP": 71.25, "bbox/AP50": 95.0, "bbox/APs": float("nan"),
               "segm/AP": 64.5, "segm/AP50": 93.125, "segm/AP-date": 60.0}


def test_select_methods(bench):
    assert bench.select_methods(bench.DEFAULT_METHODS) == ["blendmask", "condinst", "solov2", "sparseinst"]
    assert bench.select_methods(["all"]) == ["blendmask", "condinst", "solov2", "sparseinst", "fcos"]
    assert bench.select_methods(["fcos", "solov2", "fcos"]) == ["fcos", "solov2"]
    with pytest.raises(ValueError, match="maskrcnn"):
        bench.select_methods(["condinst", "maskrcnn"])
    for config in bench.METHOD_CONFIGS.values():
        assert (REPO / config).is_file()


def test_scaled_schedule_and_config_schedule(bench):
    assert bench.scaled_schedule(300, (220, 270), 0.5) == (150, (110, 135))
    assert bench.scaled_schedule(300, (220, 270), 0.001) == (1, (1, 1))
    max_iter, steps = bench.config_schedule(bench.METHOD_CONFIGS["condinst"])
    assert max_iter > 0 and all(0 < s < max_iter for s in steps)


def test_read_final_metrics_ignores_earlier_runs_and_cut_lines(bench, tmp_path):
    path = tmp_path / "metrics.json"
    assert bench.read_final_metrics(path) == {}
    _write_metrics(path, [{"iteration": 4, "time": 9.0}, {**EVAL_RECORD, "bbox/AP": 1.0}])
    offset = path.stat().st_size
    _write_metrics(path, [{"iteration": 4, "time": 3.0}, TRAIN_RECORD, EVAL_RECORD], mode="a")
    with open(path, "a") as f:
        f.write('{"iteration": 11, "ti')  # a record cut by a crash
    final = bench.read_final_metrics(path, offset)
    assert final["bbox/AP"] == 71.25 and final["segm/AP"] == 64.5 and final["segm/AP50"] == 93.125
    assert final["time"] == 2.5 and "total_loss" not in final and "iteration" not in final
    assert bench.read_final_metrics(path)["time"] == 2.5  # from the start: the last record wins
    _write_metrics(path, [TRAIN_RECORD])
    assert bench.read_final_metrics(path) == {"time": 2.5}  # training died before evaluation


def _result(bench, **kw):
    base = {"method": "condinst", "config": "configs/FruitsNuts/condinst.yaml", "returncode": 0,
            "wall_time_s": 546.4, "iterations": 300, "s_per_iter": 1.734, "box_AP": 71.25,
            "mask_AP": 64.5, "mask_AP50": 93.125, "load_before": 0.4, "load_after": 2.1}
    return {**base, **kw}


def test_table_rows(bench):
    assert bench.format_duration(546.4) == "9 min 6 s" and bench.format_duration(42.2) == "42 s"
    row = bench.table_row(_result(bench))
    assert row == "| condinst | `configs/FruitsNuts/condinst.yaml` | 300 | 1.73 | 9 min 6 s | 71.2 | 64.5 | 93.1 |"
    fcos = bench.table_row(_result(bench, method="fcos", mask_AP=None, mask_AP50=None))
    assert fcos.endswith("| 71.2 | - | - |")
    failed = bench.table_row(_result(bench, returncode=1, iterations=None, s_per_iter=None, box_AP=None,
                                     mask_AP=None, mask_AP50=None, wall_time_s=12))
    assert failed == "| condinst | `configs/FruitsNuts/condinst.yaml` | - | - | 12 s (failed, rc 1) | - | - | - |"
    assert "(no metrics)" in bench.table_row(_result(bench, box_AP=None, mask_AP=None))
    assert bench.table_row(_result(bench, mask_AP=float("nan"))).endswith("| 71.2 | - | 93.1 |")


def test_write_report(bench, tmp_path):
    results = [_result(bench), _result(bench, method="solov2", config="configs/FruitsNuts/solov2.yaml")]
    markdown = bench.write_report(results, tmp_path / "out")
    lines = (tmp_path / "out" / "benchmark.md").read_text().splitlines()
    assert (tmp_path / "out" / "benchmark.md").read_text() == markdown
    header = next(i for i, line in enumerate(lines) if line.startswith("| method |"))
    assert lines[header] == ("| method | config | iterations | s/iter | wall time (train + eval) | box AP | "
                             "mask AP | mask AP50 |")
    assert lines[header + 2].startswith("| condinst |") and lines[header + 3].startswith("| solov2 |")
    assert "load average 0.4-2.1" in markdown
    assert json.loads((tmp_path / "out" / "benchmark.json").read_text()) == results


def test_dry_run_prints_commands_and_runs_nothing(bench, tmp_path, capsys):
    out = tmp_path / "bench"
    assert bench.main(["--methods", "solov2", "fcos", "--output", str(out), "--iters-scale", "0.5",
                       "--dry-run", "--", "SOLVER.IMS_PER_BATCH", "2"]) == []
    commands = [shlex.split(line) for line in capsys.readouterr().out.splitlines()]
    assert len(commands) == 2 and not out.exists()
    solov2 = commands[0]
    assert solov2[:2] == [sys.executable, str(REPO / "tools" / "train_net.py")]
    assert solov2[solov2.index("--config-file") + 1] == "configs/FruitsNuts/solov2.yaml"
    assert solov2[solov2.index("OUTPUT_DIR") + 1] == str(out / "solov2")
    max_iter, _ = bench.config_schedule(bench.METHOD_CONFIGS["solov2"])
    assert solov2[solov2.index("SOLVER.MAX_ITER") + 1] == str(round(max_iter * 0.5))
    assert solov2[-2:] == ["SOLVER.IMS_PER_BATCH", "2"]  # opts come last, so they win
    assert "--config-file" in commands[1] and "configs/FruitsNuts/fcos.yaml" in commands[1]
    with pytest.raises(SystemExit):
        bench.parse_args(["--", "SOLVER.MAX_ITER"])  # not KEY VALUE pairs
    with pytest.raises(SystemExit):
        bench.parse_args(["--methods", "condinst", "SOLVER.MAX_ITER", "5"])  # opts without --
    capsys.readouterr()


def test_main_runs_each_method_and_keeps_going_after_a_crash(bench, tmp_path, monkeypatch):
    """Faked train_net.py processes: one writes config.yaml + metrics.json, one crashes."""
    def fake_call(cmd, cwd, stdout, stderr):
        run_dir = Path(cmd[cmd.index("OUTPUT_DIR") + 1])
        if "blendmask" in str(run_dir):
            return 1
        run_dir.mkdir(parents=True)
        (run_dir / "config.yaml").write_text("SOLVER:\n  MAX_ITER: 7\n")
        _write_metrics(run_dir / "metrics.json", [TRAIN_RECORD, EVAL_RECORD])
        return 0

    monkeypatch.setattr(bench.subprocess, "call", fake_call)
    results = bench.main(["--methods", "blendmask", "condinst", "--output", str(tmp_path)])
    assert [r["returncode"] for r in results] == [1, 0]
    assert results[1]["iterations"] == 7 and results[1]["mask_AP"] == 64.5 and results[1]["s_per_iter"] == 2.5
    markdown = (tmp_path / "benchmark.md").read_text()
    assert "failed, rc 1" in markdown and "| condinst |" in markdown and "| 71.2 | 64.5 | 93.1 |" in markdown
