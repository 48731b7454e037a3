"""tools/benchmark_finetune.py: method selection, commands, metrics parsing and the report
(no training: the runs are faked)."""
import importlib.util
import json
import math
import shlex
import subprocess
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
    with pytest.raises(ValueError, match="solo"):  # no SOLO v1 recipe for the photos
        bench.select_methods(["solo"])
    assert bench.select_methods(["all"], "synthetic") == [
        "blendmask", "condinst", "solov2", "solo", "decoupled_solo", "sparseinst", "fcos"]
    for configs in bench.DATASET_CONFIGS.values():
        for config in configs.values():
            assert (REPO / config).is_file()


def test_scaled_schedule_and_config_schedule(bench):
    assert bench.scaled_schedule(300, (220, 270), 0.5) == (150, (110, 135))
    assert bench.scaled_schedule(300, (220, 270), 0.001) == (1, (1, 1))
    max_iter, steps = bench.config_schedule(bench.DATASET_CONFIGS["fruits_nuts"]["condinst"])
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
    max_iter, _ = bench.config_schedule(bench.DATASET_CONFIGS["fruits_nuts"]["solov2"])
    assert solov2[solov2.index("SOLVER.MAX_ITER") + 1] == str(round(max_iter * 0.5))
    assert solov2[-2:] == ["SOLVER.IMS_PER_BATCH", "2"]  # opts come last, so they win
    assert "--config-file" in commands[1] and "configs/FruitsNuts/fcos.yaml" in commands[1]
    with pytest.raises(SystemExit):
        bench.parse_args(["--", "SOLVER.MAX_ITER"])  # not KEY VALUE pairs
    with pytest.raises(SystemExit):
        bench.parse_args(["--methods", "condinst", "SOLVER.MAX_ITER", "5"])  # opts without --
    capsys.readouterr()


class FakeTrainNet:
    """A stand-in for ``subprocess.Popen`` of tools/train_net.py: ``behaviour(cmd, log)``
    does the process's work and returns its exit code, or None for a process that runs
    past any deadline (until it is interrupted)."""

    def __init__(self, behaviour):
        self.behaviour, self.commands = behaviour, []

    def __call__(self, cmd, cwd, stdout, stderr):
        self.commands.append(cmd)
        return _FakeProcess(self.behaviour(cmd, stdout))


class _FakeProcess:
    def __init__(self, rc):
        self.rc, self.returncode, self.signals = rc, None, []

    def wait(self, timeout=None):
        if self.rc is None and not self.signals:
            raise subprocess.TimeoutExpired("train_net.py", timeout)
        self.returncode = self.rc if self.rc is not None else -2
        return self.returncode

    def send_signal(self, sig):
        self.signals.append(sig)

    def kill(self):
        self.signals.append("kill")


COPYPASTE_LOG = """[11/26 05:01:02 d2.evaluation.testing]: copypaste: Task: bbox
[11/26 05:01:02 d2.evaluation.testing]: copypaste: AP,AP50,AP75,APs,APm,APl
[11/26 05:01:02 d2.evaluation.testing]: copypaste: 47.5012,70.1000,50.2000,30.0000,50.0000,60.0000
[11/26 05:01:02 d2.evaluation.testing]: copypaste: Task: segm
[11/26 05:01:02 d2.evaluation.testing]: copypaste: AP,AP50,AP75,APs,APm,APl
[11/26 05:01:02 d2.evaluation.testing]: copypaste: 41.7000,67.2000,nan,20.0000,45.0000,55.0000
"""


def test_read_logged_metrics(bench):
    metrics = bench.read_logged_metrics("noise\n" + COPYPASTE_LOG.replace("47.5012", "1.0") + COPYPASTE_LOG)
    assert metrics["bbox/AP"] == pytest.approx(47.5012) and metrics["segm/AP50"] == 67.2  # the last wins
    assert math.isnan(metrics["segm/AP75"]) and len(metrics) == 12
    assert bench.read_logged_metrics("no evaluation here") == {}


def test_eval_command_is_parsed_by_train_net(bench):
    """--eval-only must precede the KEY VALUE pairs, which train_net.py takes as the rest."""
    train = bench.build_command("configs/Synthetic/solo.yaml", "/tmp/run", (10, (8, 9)), ["MODEL.DEVICE", "cpu"])
    cmd = bench.eval_command(train, "/tmp/run/model_0000009.pth")
    spec = importlib.util.spec_from_file_location("train_net_cli", REPO / "tools" / "train_net.py")
    train_net = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_net)
    args = train_net.argument_parser().parse_args(cmd[2:])
    assert args.eval_only and args.config_file == "configs/Synthetic/solo.yaml"
    assert args.opts[-2:] == ["MODEL.WEIGHTS", "/tmp/run/model_0000009.pth"] and "MODEL.DEVICE" in args.opts


def test_run_until_interrupts_a_process_at_the_deadline(bench, tmp_path):
    """A real child process: SIGINT at the deadline ends it (KeyboardInterrupt), long
    before its own end."""
    start = bench.time.perf_counter()
    with open(tmp_path / "log", "w") as log:
        rc, stopped = bench.run_until([sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"],
                                      log, timeout=2)
    assert stopped and rc != 0 and bench.time.perf_counter() - start < 30
    with open(tmp_path / "log", "w") as log:
        assert bench.run_until([sys.executable, "-c", "raise SystemExit(3)"], log, timeout=30) == (3, False)


def test_a_run_stopped_at_the_deadline_evaluates_its_last_checkpoint(bench, tmp_path, monkeypatch):
    def behaviour(cmd, log):
        run_dir = Path(cmd[cmd.index("OUTPUT_DIR") + 1])
        if "--eval-only" in cmd:
            assert cmd[-2:] == ["MODEL.WEIGHTS", str(run_dir / "model_0000249.pth")]
            log.write(COPYPASTE_LOG)
            return 0
        run_dir.mkdir(parents=True)
        (run_dir / "config.yaml").write_text("SOLVER:\n  MAX_ITER: 1000\n")
        _write_metrics(run_dir / "metrics.json", [TRAIN_RECORD])
        (run_dir / "last_checkpoint").write_text("model_0000249.pth")
        return None  # still training at the deadline

    fake = FakeTrainNet(behaviour)
    monkeypatch.setattr(bench.subprocess, "Popen", fake)
    results = bench.main(["--dataset", "synthetic", "--methods", "solo", "decoupled_solo", "--jobs", "2",
                          "--timeout", "5", "--output", str(tmp_path)])
    assert [r["method"] for r in results] == ["solo", "decoupled_solo"]
    solo = results[0]
    assert solo["stopped_at"] == 250 and solo["iterations"] == 1000 and solo["returncode"] == 0
    assert solo["mask_AP"] == 41.7 and solo["box_AP"] == pytest.approx(47.5012) and solo["s_per_iter"] == 2.5
    # The two jobs run in parallel threads, so their commands arrive in either order.
    train_configs = {c[c.index("--config-file") + 1] for c in fake.commands if "--eval-only" not in c}
    assert len(fake.commands) == 4 and train_configs == {
        str(Path("configs/Synthetic/solo.yaml")), str(Path("configs/Synthetic/decoupled_solo.yaml"))}
    markdown = (tmp_path / "benchmark.md").read_text()
    assert "synthetic shapes" in markdown and "stopped at the deadline after 250 iterations" in markdown
    assert "evaluating" in (tmp_path / "solo.log").read_text()


def test_a_run_stopped_before_any_checkpoint_reports_no_metrics(bench, tmp_path, monkeypatch):
    def behaviour(cmd, log):
        Path(cmd[cmd.index("OUTPUT_DIR") + 1]).mkdir(parents=True)
        return None

    monkeypatch.setattr(bench.subprocess, "Popen", FakeTrainNet(behaviour))
    [result] = bench.main(["--methods", "condinst", "--timeout", "1", "--output", str(tmp_path)])
    assert result["returncode"] == 124 and result["mask_AP"] is None and result["stopped_at"] is None
    assert "failed, rc 124" in (tmp_path / "benchmark.md").read_text()


def test_main_runs_each_method_and_keeps_going_after_a_crash(bench, tmp_path, monkeypatch):
    """Faked train_net.py processes: one writes config.yaml + metrics.json, one crashes."""
    def behaviour(cmd, log):
        run_dir = Path(cmd[cmd.index("OUTPUT_DIR") + 1])
        if "blendmask" in str(run_dir):
            return 1
        run_dir.mkdir(parents=True)
        (run_dir / "config.yaml").write_text("SOLVER:\n  MAX_ITER: 7\n")
        _write_metrics(run_dir / "metrics.json", [TRAIN_RECORD, EVAL_RECORD])
        return 0

    monkeypatch.setattr(bench.subprocess, "Popen", FakeTrainNet(behaviour))
    results = bench.main(["--methods", "blendmask", "condinst", "--output", str(tmp_path)])
    assert [r["returncode"] for r in results] == [1, 0]
    assert results[1]["iterations"] == 7 and results[1]["mask_AP"] == 64.5 and results[1]["s_per_iter"] == 2.5
    markdown = (tmp_path / "benchmark.md").read_text()
    assert "failed, rc 1" in markdown and "| condinst |" in markdown and "| 71.2 | 64.5 | 93.1 |" in markdown


def test_last_checkpoint(bench, tmp_path):
    assert bench.last_checkpoint(tmp_path) == (None, None)
    (tmp_path / "last_checkpoint").write_text("model_0000399.pth")
    assert bench.last_checkpoint(tmp_path) == (tmp_path / "model_0000399.pth", 400)
    (tmp_path / "config.yaml").write_text("SOLVER:\n  MAX_ITER: 1360\n")
    (tmp_path / "last_checkpoint").write_text("model_final.pth")  # stopped while evaluating
    assert bench.last_checkpoint(tmp_path) == (tmp_path / "model_final.pth", 1360)
