"""tools/gpu_train_synthetic.sh: its wiring, rehearsed on the CPU with a deadline that
stops the run at once (the GPU machine runs the same script with the real budget)."""
import os
import subprocess
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "tools" / "gpu_train_synthetic.sh"


def test_unknown_argument_prints_the_usage():
    bad = subprocess.run(["bash", str(SCRIPT), "--no-such-flag"], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2 and "--prepare" in bad.stdout


def test_rehearsal_reports_a_run_stopped_at_the_deadline(tmp_path):
    env = {**os.environ, "DEVICE": "cpu", "METHODS": "condinst", "ITER_SCALE": "0.05", "TRAIN_BUDGET": "2",
           "EVAL_BUDGET": "30", "OUT": str(tmp_path / "out"), "WORK": str(tmp_path / "work")}
    run = subprocess.run(["bash", str(SCRIPT)], cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout + run.stderr
    report = (tmp_path / "out" / "benchmark.md").read_text()
    assert "synthetic shapes" in report
    row = next(line for line in report.splitlines() if line.startswith("| condinst |"))
    assert "configs/Synthetic/condinst.yaml" in row and "rc 124" in row  # stopped before any checkpoint
    assert "stopped at the deadline" in (tmp_path / "work" / "condinst.log").read_text()
    with tarfile.open(tmp_path / "out" / "logs.tar.gz") as logs:
        assert "./condinst.log" in logs.getnames()
    train = next(line for line in run.stdout.splitlines() if line.startswith("[condinst] ") and "train_net.py" in line)
    for pair in ("MODEL.DEVICE cpu", "DATALOADER.NUM_WORKERS 2", "SOLVER.MAX_ITER 23"):
        assert pair in train
