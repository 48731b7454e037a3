#!/usr/bin/env python
"""Fine-tuning benchmark on real photos: each mask method on fruits_nuts.

Every selected method is fine-tuned from EfficientNet-Lite0's ImageNet weights on
``fruits_nuts_train`` (14 photos) and evaluated on ``fruits_nuts_val`` (4 held-out photos)
with its ``configs/FruitsNuts/<method>.yaml``, each in its own ``tools/train_net.py``
process (a crash in one does not stop the others). The wall time of each process (model
build, training and evaluation) and the final COCO box / mask AP, read from its
``OUTPUT_DIR/metrics.json``, go into a markdown table (``<output>/benchmark.md``, also
printed) and ``<output>/benchmark.json``.

Examples:
    python tools/benchmark_finetune.py                       # the four mask methods
    python tools/benchmark_finetune.py --methods condinst fcos --output output/bench
    python tools/benchmark_finetune.py --iters-scale 0.5     # half the iterations
    python tools/benchmark_finetune.py --methods solov2 -- SOLVER.MAX_ITER 5   # a smoke run
    python tools/benchmark_finetune.py --dry-run             # print the commands only
"""
import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
TRAIN_NET = REPO_ROOT / "tools" / "train_net.py"
CONFIG_DIR = Path("configs") / "FruitsNuts"

# method -> config (relative to the repository root). FCOS gives the box AP reference.
METHOD_CONFIGS = {
    "blendmask": CONFIG_DIR / "blendmask.yaml",
    "condinst": CONFIG_DIR / "condinst.yaml",
    "solov2": CONFIG_DIR / "solov2.yaml",
    "sparseinst": CONFIG_DIR / "sparseinst.yaml",
    "fcos": CONFIG_DIR / "fcos.yaml",
}
DEFAULT_METHODS = ("blendmask", "condinst", "solov2", "sparseinst")
TABLE_HEADER = ("method", "config", "iterations", "s/iter", "wall time (train + eval)",
                "box AP", "mask AP", "mask AP50")


def select_methods(names):
    """The methods to run, in the order given (``["all"]``: every method incl. FCOS);
    ``ValueError`` on an unknown name."""
    if list(names) == ["all"]:
        return list(METHOD_CONFIGS)
    unknown = [n for n in names if n not in METHOD_CONFIGS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {list(METHOD_CONFIGS)} or 'all'")
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


def read_max_iter(run_dir):
    """SOLVER.MAX_ITER of the run, from the ``config.yaml`` train_net.py saves; None if absent."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return None
    return yaml.safe_load(path.read_text())["SOLVER"]["MAX_ITER"]


def run_method(method, config_file, run_dir, cmd, log_file):
    """Run one method's command (cwd: the repository root; output to ``log_file``) and
    return its result: wall time, return code, iterations, s/iter and APs (None if absent)."""
    metrics_file = Path(run_dir) / "metrics.json"
    offset = metrics_file.stat().st_size if metrics_file.is_file() else 0
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    with open(log_file, "w") as log:
        rc = subprocess.call(cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    metrics = read_final_metrics(metrics_file, offset)
    return {
        "method": method, "config": str(config_file), "returncode": rc, "wall_time_s": round(wall, 1),
        "iterations": read_max_iter(run_dir), "s_per_iter": metrics.get("time"),
        "box_AP": metrics.get("bbox/AP"), "mask_AP": metrics.get("segm/AP"),
        "mask_AP50": metrics.get("segm/AP50"), "metrics": metrics, "log": str(log_file),
        "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2),
    }


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


def write_report(results, output_dir):
    """Write ``benchmark.md`` and ``benchmark.json`` under ``output_dir``; return the markdown."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    markdown = "\n".join([
        "# Fine-tuning on fruits_nuts (train 14 images, val 4 held-out images)", "",
        format_table(results), "", machine_note(results), ""])
    (output_dir / "benchmark.md").write_text(markdown)
    (output_dir / "benchmark.json").write_text(json.dumps(results, indent=2))
    return markdown


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS),
                        help=f"methods to run, from {list(METHOD_CONFIGS)}, or 'all' (default: the four mask methods)")
    parser.add_argument("--output", default="output/benchmark_finetune",
                        help="folder of the report and of one OUTPUT_DIR per method")
    parser.add_argument("--iters-scale", type=float, default=1.0,
                        help="multiply each config's SOLVER.MAX_ITER and SOLVER.STEPS by this")
    parser.add_argument("--vis-images", type=int, default=0,
                        help="pictures of predictions per method (not part of a timed benchmark: default 0)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("opts", nargs=argparse.REMAINDER,
                        help="KEY VALUE pairs passed to every run, after the config (put them after --)")
    args = parser.parse_args(argv)
    args.opts = [o for o in args.opts if o != "--"]
    if len(args.opts) % 2:
        parser.error(f"opts must be KEY VALUE pairs, got {args.opts}")
    try:
        args.methods = select_methods(args.methods)
    except ValueError as e:
        parser.error(str(e))
    return args


def plan(args):
    """``[(method, config, run_dir, command)]`` for the selected methods."""
    runs = []
    for method in args.methods:
        config = METHOD_CONFIGS[method]
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
    results = []
    for method, config, run_dir, cmd in runs:
        print(f"[{method}] {shlex.join(cmd)}", flush=True)
        result = run_method(method, config, run_dir, cmd, Path(args.output) / f"{method}.log")
        print(f"[{method}] {table_row(result)}", flush=True)
        results.append(result)
        write_report(results, args.output)  # a partial report survives an interruption
    print(write_report(results, args.output))
    return results


if __name__ == "__main__":
    main()
