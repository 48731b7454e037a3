#!/usr/bin/env python
r"""Training benchmark: each mask method on fruits_nuts (real photos) or the synthetic set.

Every selected method is trained from EfficientNet-Lite0's ImageNet weights with its
config of the chosen data set (``--dataset``): ``fruits_nuts`` (default; 14 train photos,
4 held-out: ``configs/FruitsNuts/<method>.yaml``) or ``synthetic`` (1500 train / 200 val
images: ``configs/Synthetic/<method>.yaml``), each in its own ``tools/train_net.py``
process (a crash in one does not stop the others; ``--jobs N`` runs N at once, for a
GPU). The wall time of each process (model build, training and evaluation) and the final
COCO box / mask AP, read from its ``OUTPUT_DIR/metrics.json``, go into a markdown table
(``<output>/benchmark.md``, also printed) and ``<output>/benchmark.json``.

``--timeout S`` bounds each training process: at the deadline it is interrupted and its
last checkpoint evaluated (``--eval-only``; APs read from the log), and the table says at
which iteration it stopped, so a time-boxed machine still gets numbers.

Examples:
    python tools/benchmark_finetune.py                       # the four mask methods
    python tools/benchmark_finetune.py --methods condinst fcos --output output/bench
    python tools/benchmark_finetune.py --iters-scale 0.5     # half the iterations
    python tools/benchmark_finetune.py --methods solov2 -- SOLVER.MAX_ITER 5   # a smoke run
    python tools/benchmark_finetune.py --dry-run             # print the commands only
    python tools/benchmark_finetune.py --dataset synthetic --methods all --jobs 6 \
        --iters-scale 4 --timeout 400 -- MODEL.DEVICE cuda   # all at once on one GPU
"""
import argparse
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
TRAIN_NET = REPO_ROOT / "tools" / "train_net.py"
_FRUITS, _SYNTHETIC = Path("configs") / "FruitsNuts", Path("configs") / "Synthetic"

# data set -> method -> config (relative to the repository root). FCOS gives the box AP
# reference.
DATASET_CONFIGS = {
    "fruits_nuts": {
        "blendmask": _FRUITS / "blendmask.yaml",
        "condinst": _FRUITS / "condinst.yaml",
        "solov2": _FRUITS / "solov2.yaml",
        "sparseinst": _FRUITS / "sparseinst.yaml",
        "fcos": _FRUITS / "fcos.yaml",
    },
    "synthetic": {
        "blendmask": _SYNTHETIC / "blendmask.yaml",
        "condinst": _SYNTHETIC / "condinst.yaml",
        "solov2": _SYNTHETIC / "solov2.yaml",
        "solo": _SYNTHETIC / "solo.yaml",
        "decoupled_solo": _SYNTHETIC / "decoupled_solo.yaml",
        "sparseinst": _SYNTHETIC / "sparseinst.yaml",
        "fcos": _SYNTHETIC / "default.yaml",
    },
}
DEFAULT_METHODS = ("blendmask", "condinst", "solov2", "sparseinst")
DATASET_TITLES = {
    "fruits_nuts": "Fine-tuning on fruits_nuts (train 14 images, val 4 held-out images)",
    "synthetic": "Training on the synthetic shapes set (train 1500 images, val 200)",
}
# How long an interrupted training process gets to exit before it is killed.
STOP_GRACE_S = 60
TABLE_HEADER = ("method", "config", "iterations", "s/iter", "wall time (train + eval)",
                "box AP", "mask AP", "mask AP50")


def select_methods(names, dataset="fruits_nuts"):
    """The methods to run, in the order given (``["all"]``: every method of the data set
    incl. FCOS); ``ValueError`` on an unknown name."""
    configs = DATASET_CONFIGS[dataset]
    if list(names) == ["all"]:
        return list(configs)
    unknown = [n for n in names if n not in configs]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown} for {dataset}; choose from {list(configs)} or 'all'")
    return list(dict.fromkeys(names))


def scaled_schedule(max_iter, steps, scale):
    """``(max_iter, steps)`` with both multiplied by ``scale`` (at least 1 iteration)."""
    new_max = max(1, int(round(max_iter * scale)))
    return new_max, tuple(max(1, int(round(s * scale))) for s in steps)


def config_schedule(config_file):
    """``(SOLVER.MAX_ITER, SOLVER.STEPS)`` of a config file, its ``_BASE_`` files merged."""
    from adet.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(str(REPO_ROOT / config_file))
    return cfg.SOLVER.MAX_ITER, tuple(cfg.SOLVER.STEPS)


def build_command(config_file, run_dir, schedule=None, opts=(), vis_images=0):
    """The ``tools/train_net.py`` command of one method. ``schedule`` (``(max_iter,
    steps)`` or None: the config's) comes before ``opts`` so that ``opts`` win."""
    cmd = [sys.executable, str(TRAIN_NET), "--config-file", str(config_file),
           "--vis-images", str(vis_images), "OUTPUT_DIR", str(run_dir)]
    if schedule is not None:
        max_iter, steps = schedule
        cmd += ["SOLVER.MAX_ITER", str(max_iter), "SOLVER.STEPS", str(tuple(steps))]
    return cmd + [str(o) for o in opts]


def eval_command(train_cmd, weights):
    """``train_cmd`` turned into the evaluation of ``weights`` (``--eval-only`` goes before
    the KEY VALUE pairs, which train_net.py's parser takes as the rest of the line)."""
    at = train_cmd.index("--config-file")
    return train_cmd[:at] + ["--eval-only"] + train_cmd[at:] + ["MODEL.WEIGHTS", str(weights)]


def read_final_metrics(metrics_file, offset=0):
    """The last evaluation record (the one with ``bbox/AP``) and the last training
    ``time`` (s/iter) written to Detectron2's ``metrics.json`` after byte ``offset``
    (records of earlier runs in the same file are ignored). Missing file: ``{}``."""
    path = Path(metrics_file)
    if not path.is_file():
        return {}
    with open(path, "rb") as f:
        f.seek(offset)
        lines = f.read().decode("utf-8", errors="replace").splitlines()
    final = {}
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a crash
            continue
        if "bbox/AP" in record:
            final.update({k: v for k, v in record.items() if k.startswith(("bbox/", "segm/"))})
        elif "time" in record:
            final["time"] = record["time"]
    return final


_COPYPASTE = re.compile(r"copypaste: (.*)$")


def read_logged_metrics(log_text):
    """``{"bbox/AP": .., "segm/AP50": ..}`` from the ``copypaste:`` lines Detectron2 logs
    after an evaluation (task, metric names, values); the last evaluation wins."""
    metrics, task, names = {}, None, None
    for line in log_text.splitlines():
        match = _COPYPASTE.search(line)
        if not match:
            continue
        text = match.group(1).strip()
        if text.startswith("Task: "):
            task, names = text[len("Task: "):], None
        elif names is None:
            names = text.split(",")
        elif task is not None:
            values = [float(v) for v in text.split(",")]
            metrics.update({f"{task}/{n}": v for n, v in zip(names, values)})
            task = names = None
    return metrics


def last_checkpoint(run_dir):
    """``(path, iterations done)`` of the run's last checkpoint, or ``(None, None)``."""
    marker = Path(run_dir) / "last_checkpoint"
    if not marker.is_file():
        return None, None
    name = marker.read_text().strip()
    numbered = re.search(r"(\d+)\.pth$", name)
    done = int(numbered.group(1)) + 1 if numbered else read_max_iter(run_dir)  # model_final.pth
    return Path(run_dir) / name, done


def run_until(cmd, log, timeout=None):
    """Run ``cmd`` (cwd: the repository root, output to the open file ``log``); at
    ``timeout`` seconds interrupt it (SIGINT, then SIGKILL after STOP_GRACE_S).
    Returns ``(returncode, stopped at the deadline)``."""
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        return proc.wait(timeout=timeout), False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        return proc.returncode, True


def read_max_iter(run_dir):
    """SOLVER.MAX_ITER of the run, from the ``config.yaml`` train_net.py saves; None if absent."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return None
    return yaml.safe_load(path.read_text())["SOLVER"]["MAX_ITER"]


def run_method(method, config_file, run_dir, cmd, log_file, timeout=None, eval_timeout=None):
    """Run one method's command (cwd: the repository root; output to ``log_file``) and
    return its result: wall time, return code, iterations, s/iter and APs (None if absent).
    A run stopped at ``timeout`` has its last checkpoint evaluated (``stopped_at``: the
    iterations it had done; ``returncode``: the evaluation's)."""
    metrics_file = Path(run_dir) / "metrics.json"
    offset = metrics_file.stat().st_size if metrics_file.is_file() else 0
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    stopped_at = None
    with open(log_file, "w") as log:
        rc, stopped = run_until(cmd, log, timeout)
    metrics = read_final_metrics(metrics_file, offset)
    if stopped:
        weights, stopped_at = last_checkpoint(run_dir)
        rc, metrics = _evaluate_checkpoint(cmd, weights, log_file, eval_timeout, metrics)
    wall = time.perf_counter() - start
    return {
        "method": method, "config": str(config_file), "returncode": rc, "wall_time_s": round(wall, 1),
        "iterations": read_max_iter(run_dir), "stopped_at": stopped_at, "s_per_iter": metrics.get("time"),
        "box_AP": metrics.get("bbox/AP"), "mask_AP": metrics.get("segm/AP"),
        "mask_AP50": metrics.get("segm/AP50"), "metrics": metrics, "log": str(log_file),
        "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2),
    }


def _evaluate_checkpoint(train_cmd, weights, log_file, timeout, metrics):
    """Evaluate ``weights`` (appending to ``log_file``); ``(returncode, metrics)`` with
    the logged APs over ``metrics`` (which keeps the training's s/iter)."""
    with open(log_file, "a") as log:
        if weights is None:
            log.write("\n[benchmark_finetune] stopped at the deadline before any checkpoint\n")
            return 124, metrics
        log.write(f"\n[benchmark_finetune] stopped at the deadline; evaluating {weights}\n")
        log.flush()
        offset = log.tell()
        rc, stopped = run_until(eval_command(train_cmd, weights), log, timeout)
    with open(log_file, encoding="utf-8", errors="replace") as log:
        log.seek(offset)
        logged = read_logged_metrics(log.read())
    return (124 if stopped else rc), {**metrics, **logged}


def format_duration(seconds):
    """``"9 min 6 s"`` (``"42 s"`` under a minute)."""
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


def _ap(value):
    """An AP for the table: one decimal, ``-`` when absent or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.1f}"


def table_row(result):
    """One markdown table row; a failed run says so in the wall-time cell."""
    wall = format_duration(result["wall_time_s"])
    if result.get("stopped_at") is not None:
        wall += f" (stopped at the deadline after {result['stopped_at']} iterations)"
    if result["returncode"] != 0:
        wall += f" (failed, rc {result['returncode']})"
    elif result["box_AP"] is None:
        wall += " (no metrics)"
    s_iter = "-" if result["s_per_iter"] is None else f"{result['s_per_iter']:.2f}"
    cells = [result["method"], f"`{result['config']}`", str(result["iterations"] or "-"), s_iter, wall,
             _ap(result["box_AP"]), _ap(result["mask_AP"]), _ap(result["mask_AP50"])]
    return "| " + " | ".join(cells) + " |"


def format_table(results):
    """The markdown table of all results."""
    lines = ["| " + " | ".join(TABLE_HEADER) + " |", "|" + "---|" * len(TABLE_HEADER)]
    return "\n".join(lines + [table_row(r) for r in results])


def machine_note(results):
    """One line on the machine: CPUs, OMP_NUM_THREADS, load average around the runs."""
    loads = [r["load_before"] for r in results] + [r["load_after"] for r in results]
    load = f"{min(loads):.1f}-{max(loads):.1f}" if loads else "-"
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    return f"Machine: {os.cpu_count()} CPUs, OMP_NUM_THREADS={threads}, 1-minute load average {load}."


def write_report(results, output_dir, dataset="fruits_nuts"):
    """Write ``benchmark.md`` and ``benchmark.json`` under ``output_dir``; return the markdown."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    markdown = "\n".join([
        f"# {DATASET_TITLES[dataset]}", "",
        format_table(results), "", machine_note(results), ""])
    (output_dir / "benchmark.md").write_text(markdown)
    (output_dir / "benchmark.json").write_text(json.dumps(results, indent=2))
    return markdown


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=sorted(DATASET_CONFIGS), default="fruits_nuts",
                        help="the configs' data set (default fruits_nuts)")
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS),
                        help="methods to run, or 'all': fruits_nuts has "
                        f"{list(DATASET_CONFIGS['fruits_nuts'])}, synthetic also solo and decoupled_solo "
                        "(default: the four mask methods)")
    parser.add_argument("--output", default="output/benchmark_finetune",
                        help="folder of the report and of one OUTPUT_DIR per method")
    parser.add_argument("--iters-scale", type=float, default=1.0,
                        help="multiply each config's SOLVER.MAX_ITER and SOLVER.STEPS by this")
    parser.add_argument("--vis-images", type=int, default=0,
                        help="pictures of predictions per method (not part of a timed benchmark: default 0)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs at once (default 1: timings on a CPU need an otherwise idle machine)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds of training per run; then it is stopped and its last checkpoint "
                        "evaluated (default: none)")
    parser.add_argument("--eval-timeout", type=float, default=None,
                        help="seconds for that evaluation (default: none)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("opts", nargs=argparse.REMAINDER,
                        help="KEY VALUE pairs passed to every run, after the config (put them after --)")
    args = parser.parse_args(argv)
    args.opts = [o for o in args.opts if o != "--"]
    if len(args.opts) % 2:
        parser.error(f"opts must be KEY VALUE pairs, got {args.opts}")
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    try:
        args.methods = select_methods(args.methods, args.dataset)
    except ValueError as e:
        parser.error(str(e))
    return args


def plan(args):
    """``[(method, config, run_dir, command)]`` for the selected methods."""
    runs = []
    for method in args.methods:
        config = DATASET_CONFIGS[args.dataset][method]
        run_dir = Path(args.output) / method
        schedule = None
        if args.iters_scale != 1.0:
            schedule = scaled_schedule(*config_schedule(config), args.iters_scale)
        runs.append((method, config, run_dir, build_command(config, run_dir, schedule, args.opts, args.vis_images)))
    return runs


def main(argv=None):
    args = parse_args(argv)
    runs = plan(args)
    if args.dry_run:
        for _, _, _, cmd in runs:
            print(shlex.join(cmd))
        return []
    Path(args.output).mkdir(parents=True, exist_ok=True)
    done, report_lock = {}, threading.Lock()

    def run(method, config, run_dir, cmd):
        print(f"[{method}] {shlex.join(cmd)}", flush=True)
        result = run_method(method, config, run_dir, cmd, Path(args.output) / f"{method}.log",
                            args.timeout, args.eval_timeout)
        print(f"[{method}] {table_row(result)}", flush=True)
        with report_lock:  # a partial report (in the methods' order) survives an interruption
            done[method] = result
            write_report([done[m] for m in args.methods if m in done], args.output, args.dataset)
        return result

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(lambda r: run(*r), runs))
    print(write_report(results, args.output, args.dataset))
    return results


if __name__ == "__main__":
    main()
