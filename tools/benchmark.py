#!/usr/bin/env python
"""Speed of a config against Detectron2's Mask R-CNN R50-FPN, measured in one process.

Inference: latency per image (after warm-up runs, median over timed runs).
Training: seconds per iteration (forward, backward, SGD step; median).
Both models see the same real images (../shared/data/coco_tiny) resized to the same
short side, and carry the reference schemas' deterministic weights when available,
so that post-processing sees a realistic number of candidates. Prints a table with
ratios (ours / baseline: below 1 is faster) and, for the meta-architectures in STAGES
(SparseInst, Mask R-CNN), the median time of each inference stage with post-processing's
share of the total (measured in separate runs, by forward hooks on the stage modules).
--profile-train adds one profiled training iteration per model: its wall time against
the time the device is busy (on a GPU; much less means the host is the bottleneck), its
counts of aten ops, and on a GPU of kernels and of the host's waits for it, and the ops
with the most host and device time.
Not a test: timings depend on the machine.

    python tools/benchmark.py --config-file configs/FCOS-Detection/R_50_1x.yaml
    python tools/benchmark.py --config-file ... --device cuda --size 800 --runs 50
    python tools/benchmark.py --config-file configs/SOLOv2/R50_3x.yaml --device cuda --profile-train

--blender measures only BlendMask's blender instead: the fused op (adet/layers/blender_op.py)
against the plain PyTorch path, forward and forward + backward, on synthetic bases and
boxes at the paper's sizes (one 800 x 1333 image, bases at 1/4, 100 instances, the
BLENDMASK settings of --config-file or of adet's defaults: K=4, R=56, attentions 14 x 14):
median time and peak memory allocated during the call (CPU: from the profiler's memory
events; CUDA: torch.cuda.max_memory_allocated).

    python tools/benchmark.py --blender --threads 1
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from tabulate import tabulate

from detectron2 import model_zoo
from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from adet.config import get_cfg
from adet.data import register_shared_datasets, shared_data_root

BASELINE = "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", default=None, help="adet config to measure (required without --blender)")
    p.add_argument("--schema", default=None,
                   help="reference schema name for deterministic weights (default: guessed from the config)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--size", type=int, default=512, help="short side of the input images")
    p.add_argument("--max-size", type=int, default=853)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--runs", type=int, default=10, help="timed inference runs (one image each)")
    p.add_argument("--train-iters", type=int, default=5, help="timed training iterations (0: skip)")
    p.add_argument("--batch-size", type=int, default=2, help="images per training iteration")
    p.add_argument("--profile-train", action="store_true",
                   help="also profile one training iteration of each model (torch.profiler): wall vs device-busy "
                        "time, op / kernel / sync counts, the ops with the most host and device time")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--json", default=None, help="also write the results to this json file")
    p.add_argument("--blender", action="store_true",
                   help="time the fused vs the plain BlendMask blender instead of whole models")
    p.add_argument("--blender-instances", type=int, default=100, help="instances (boxes) for --blender")
    p.add_argument("--blender-image", type=int, nargs=2, default=(800, 1333), metavar=("H", "W"),
                   help="input image size for --blender (the bases are at POOLER_SCALES of it)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides for the measured model")
    args = p.parse_args(argv)
    if args.config_file is None and not args.blender:
        p.error("--config-file is required (or --blender)")
    return args


def load_cfg(path, opts, device, adet_config=True):
    cfg = get_cfg() if adet_config else model_zoo.get_config(path)
    if adet_config:
        cfg.merge_from_file(path)
    cfg.merge_from_list(list(opts) + ["MODEL.DEVICE", device, "MODEL.WEIGHTS", ""])
    return cfg


def reference_state_dict(schema_name):
    """Deterministic weights from ../shared/reference, or None when unavailable."""
    reference = shared_data_root().parent / "reference"
    schema_file = reference / "schemas" / f"{schema_name}.json"
    if not schema_name or not schema_file.exists():
        return None
    sys.path.insert(0, str(reference))
    import refweights  # noqa: E402  (a data helper shipped with the reference facts)

    return refweights.state_dict_for(json.loads(schema_file.read_text()))


def guess_schema(config_file):
    stem = Path(config_file).stem
    method = Path(config_file).parent.name.split("-")[0].lower()
    stem = stem.removeprefix("sparse_inst_")  # SparseInst/sparse_inst_r50_giam -> sparseinst_r50_giam
    return f"{method}_{stem}"


def make_model(cfg, schema_name):
    model = build_model(cfg)
    state = reference_state_dict(schema_name)
    if state is not None:
        model.load_state_dict(state, strict=True)
    return model, state is not None


def batches(cfg, size, max_size, is_train):
    """Mapped coco_tiny images at the requested size, in the model's input format."""
    register_shared_datasets()
    dicts = DatasetCatalog.get("coco_tiny_train" if is_train else "coco_tiny_val")
    mapper = DatasetMapper(cfg, is_train=is_train, augmentations=[T.ResizeShortestEdge(size, max_size)],
                           image_format=cfg.INPUT.FORMAT, use_instance_mask=cfg.MODEL.MASK_ON,
                           instance_mask_format=cfg.INPUT.MASK_FORMAT)
    return [mapper(d) for d in dicts if not is_train or any(not a.get("iscrowd", 0) for a in d["annotations"])]


def synchronize(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed_runs(fn, warmup, runs, device, sample=lambda start, end: end - start):
    """Call ``fn(i)`` for i in range(warmup + runs), synchronising the device around each
    call; ``sample(start, end)`` (perf_counter seconds) of each call after the warm-up."""
    samples = []
    for i in range(warmup + runs):
        synchronize(device)
        start = time.perf_counter()
        fn(i)
        synchronize(device)
        if i >= warmup:
            samples.append(sample(start, time.perf_counter()))
    return samples


def time_inference(model, inputs, warmup, runs, device):
    model.eval()
    with torch.no_grad():
        times = timed_runs(lambda i: model([inputs[i % len(inputs)]]), warmup, runs, device)
    return statistics.median(times)


def training_steps(model, inputs, batch_size):
    """``step(i)``: training iteration i as Detectron2's trainer runs it (forward with
    losses, backward, SGD step) on images i * batch_size ... of ``inputs``."""
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-5, momentum=0.9)
    storage = EventStorage(0)  # Detectron2's heads log to it during training

    def step(i):
        batch = [inputs[(i * batch_size + j) % len(inputs)] for j in range(batch_size)]
        with storage:
            losses = model(batch)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    return step


# The host's waits for the GPU (each read of a device value, e.g. item, tolist, nonzero,
# waits for the stream).
SYNC_EVENTS = ("cudaStreamSynchronize", "cudaDeviceSynchronize")


def profile_training(step, device, top=12):
    """One profiled training iteration ``step(1)`` (after ``step(0)``): where its time goes.

    On a GPU a step is bound by the host when the device is busy for much less than the
    wall time: then the count of ops (each launches kernels) and of the host's waits, and
    the ops with the most host time, point at the cause. On the CPU there is no device
    time and no waits (None)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    on_gpu = device.startswith("cuda")
    step(0)
    synchronize(device)
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])) as prof:
        start = time.perf_counter()
        step(1)
        synchronize(device)
        wall = time.perf_counter() - start
    events = prof.key_averages()
    host_ops = [e for e in events if e.key.startswith("aten::")]
    # Kernels, copies and memsets; an aten op's device time is that of the kernels it launched.
    device_work = [e for e in events if e.device_type != DeviceType.CPU]

    def device_us(e):  # torch renamed self_cuda_time_total to self_device_time_total (2.4)
        return getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)

    def ranked(items, us):
        return [[e.key[:70], e.count, round(us(e) / 1000, 2)] for e in sorted(items, key=us, reverse=True)[:top]]

    return {
        "wall_ms": 1000 * wall,
        "device_busy_ms": sum(device_us(e) for e in device_work) / 1000 if on_gpu else None,
        "aten_ops": sum(e.count for e in host_ops),
        "kernels": sum(e.count for e in device_work) if on_gpu else None,
        "syncs": sum(e.count for e in events if e.key in SYNC_EVENTS) if on_gpu else None,
        "top_host": ranked(host_ops, lambda e: e.self_cpu_time_total),
        "top_device": ranked(device_work, device_us) if on_gpu else [],
    }


def profile_report(rows):
    """Text of each row's training profile (rows without one are left out)."""
    lines = []
    for r in rows:
        p = r.get("train_profile")
        if p is None:
            continue
        if p["device_busy_ms"] is None:
            device = "no device (CPU)"
        else:
            device = f"device busy {p['device_busy_ms']:.1f} ms, {p['kernels']} kernels, {p['syncs']} host waits"
        lines.append(f"{r['model']}: one training iteration {p['wall_ms']:.1f} ms, {p['aten_ops']} aten ops, {device}")
        for title, ops in (("self host time", p["top_host"]), ("self device time", p["top_device"])):
            if ops:
                lines.append(tabulate(ops, headers=[f"op (by {title})", "calls", "ms"], tablefmt="github",
                                      disable_numparse=True))
        lines.append("")
    return "\n".join(lines)


# Sub-modules whose forward passes split one inference into stages, by meta-architecture.
# What runs before the first is "preprocess" (normalise, pad); what runs after the last
# is "postprocess": for SparseInst, scoring, thresholding, mask rescoring, upsampling and
# binarising; for Mask R-CNN, pasting the masks into the image (its box NMS and mask
# head run inside roi_heads).
STAGES = {
    "SparseInst": ("backbone", "encoder", "decoder"),
    "GeneralizedRCNN": ("backbone", "proposal_generator", "roi_heads"),
}


def _stage_marks(model, names, device):
    """Forward hooks that record when each stage starts and ends: (marks dict, handles)."""
    marks = {}

    def mark(key):
        def hook(*_):
            synchronize(device)
            marks[key] = time.perf_counter()
        return hook

    handles = []
    for name in names:
        module = getattr(model, name)
        handles += [module.register_forward_pre_hook(mark(f"{name}:start")),
                    module.register_forward_hook(mark(f"{name}:end"))]
    return marks, handles


def _split(marks, names, start, end):
    """Seconds per stage of one inference from the hooks' time marks."""
    parts = {"preprocess": marks[f"{names[0]}:start"] - start}
    parts.update({n: marks[f"{n}:end"] - marks[f"{n}:start"] for n in names})
    parts["postprocess"] = end - marks[f"{names[-1]}:end"]
    parts["total"] = end - start
    return parts


def time_inference_stages(model, inputs, warmup, runs, device):
    """Median ms of each inference stage (see STAGES) and of the whole call, one image
    per call; None for a meta-architecture without a STAGES entry."""
    names = STAGES.get(type(model).__name__)
    if names is None:
        return None
    marks, handles = _stage_marks(model, names, device)
    model.eval()
    try:
        with torch.no_grad():
            samples = timed_runs(lambda i: model([inputs[i % len(inputs)]]), warmup, runs, device,
                                 sample=lambda start, end: _split(marks, names, start, end))
    finally:
        for handle in handles:
            handle.remove()
    return {k: 1000 * statistics.median(s[k] for s in samples) for k in samples[0]}


def stage_report(rows):
    """Table of the inference stages and of the post-processing share of the total."""
    table = []
    for r in rows:
        stages = r.get("stages_ms")
        if stages:
            parts = ", ".join(f"{k} {v:.1f}" for k, v in stages.items() if k not in ("postprocess", "total"))
            table.append([r["model"], parts, f"{stages['postprocess']:.1f}", f"{stages['total']:.1f}",
                          f"{100 * r['postprocess_share']:.1f}%"])
    headers = ["model", "stages (ms)", "post-process ms", "total ms", "post-process share"]
    return tabulate(table, headers=headers, tablefmt="github", disable_numparse=True) if table else ""


def measure(name, cfg, schema_name, args):
    model, deterministic = make_model(cfg, schema_name)
    row = {"model": name, "weights": "reference (deterministic)" if deterministic else "random init"}
    print(f"[benchmark] {name}: inference x{args.runs} ...", flush=True)
    row["infer_ms"] = 1000 * time_inference(model, batches(cfg, args.size, args.max_size, False),
                                            args.warmup, args.runs, args.device)
    stages = time_inference_stages(model, batches(cfg, args.size, args.max_size, False),
                                   args.warmup, args.runs, args.device)
    if stages is not None:  # separate runs: the hooks' synchronisations would slow infer_ms
        row["stages_ms"] = stages
        row["postprocess_share"] = stages["postprocess"] / stages["total"]
    if args.train_iters > 0 or args.profile_train:
        step = training_steps(model, batches(cfg, args.size, args.max_size, True), args.batch_size)
    if args.train_iters > 0:
        print(f"[benchmark] {name}: training x{args.train_iters} ...", flush=True)
        # The first iteration is a warm-up.
        row["train_s_per_iter"] = statistics.median(timed_runs(step, 1, args.train_iters, args.device))
    if args.profile_train:
        print(f"[benchmark] {name}: profiling a training iteration ...", flush=True)
        row["train_profile"] = profile_training(step, args.device)
    return row


def report(rows):
    base = rows[-1]
    table = []
    for r in rows:
        line = [r["model"], r["weights"], f"{r['infer_ms']:.1f}", f"{r['infer_ms'] / base['infer_ms']:.2f}"]
        if "train_s_per_iter" in r:
            line += [f"{r['train_s_per_iter']:.3f}", f"{r['train_s_per_iter'] / base['train_s_per_iter']:.2f}"]
        table.append(line)
    headers = ["model", "weights", "inference ms/img", "ratio"] + (
        ["train s/iter", "ratio"] if "train_s_per_iter" in base else [])
    return tabulate(table, headers=headers, tablefmt="github", disable_numparse=True)


# --------------------------------------------------------------------------- blender
def blender_inputs(cfg, args, generator):
    """Synthetic blender inputs at BlendMask's sizes: bases (1, K, H/4, W/4), N boxes of
    16 to 400 pixels anywhere in the image (pooler format), attentions (N, K, A, A)."""
    bm, (h, w), n = cfg.MODEL.BLENDMASK, args.blender_image, args.blender_instances
    k, scale = cfg.MODEL.BASIS_MODULE.NUM_BASES, bm.POOLER_SCALES[0]
    bases = torch.randn(1, k, round(h * scale), round(w * scale), generator=generator)
    size = torch.rand(n, 2, generator=generator) * 384 + 16
    corner = torch.rand(n, 2, generator=generator) * (torch.tensor([w, h]) - size)
    rois = torch.cat([torch.zeros(n, 1), corner, corner + size], dim=1)
    attns = torch.randn(n, k, bm.ATTN_SIZE, bm.ATTN_SIZE, generator=generator)
    return [t.to(args.device) for t in (bases, rois, attns)]


def blender_call(cfg, inputs, impl, backward):
    """A closure that runs the blender once (and its backward, for `backward`)."""
    from adet.layers import blender_op

    bm = cfg.MODEL.BLENDMASK
    bases, rois, attns = inputs
    kwargs = dict(resolution=bm.BOTTOM_RESOLUTION, spatial_scale=bm.POOLER_SCALES[0],
                  sampling_ratio=bm.POOLER_SAMPLING_RATIO, aligned=bm.POOLER_TYPE == "ROIAlignV2",
                  interp=bm.TOP_INTERP, impl=impl)

    def run():
        b, a = bases.detach().requires_grad_(backward), attns.detach().requires_grad_(backward)
        with torch.set_grad_enabled(backward):
            out = blender_op.blend(b, rois, a, **kwargs)
            if backward:
                out.backward(torch.ones_like(out))
    return run


def median_seconds(fn, warmup, runs, device):
    return statistics.median(timed_runs(lambda i: fn(), warmup, runs, device))


def peak_bytes(fn, device):
    """Peak of the memory allocated during one call of fn, above what was allocated
    before it (so the inputs do not count; outputs, saved tensors and gradients do)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    import tempfile

    from torch.profiler import ProfilerActivity, profile

    # The profiler records every CPU allocation and free with the running total
    # ("Total Allocated", counted from the start of profiling) in its trace.
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        prof.export_chrome_trace(f.name)
        events = json.loads(Path(f.name).read_text())["traceEvents"]
    totals = [e["args"]["Total Allocated"] for e in events
              if e.get("name") == "[memory]" and e.get("args", {}).get("Device Type", 0) == 0]
    return max(totals, default=0)


def measure_blender(cfg, args):
    """Rows (path, pass, ms, peak MiB) for the plain and the fused blender."""
    from adet.layers import blender_op

    inputs = blender_inputs(cfg, args, torch.Generator().manual_seed(0))
    fused_ok = blender_op.fused_available(inputs[0], cfg.MODEL.BLENDMASK.TOP_INTERP)
    rows = []
    for backward in (False, True):
        for impl in ("plain", "fused"):
            row = {"path": impl, "pass": "forward + backward" if backward else "forward"}
            if impl == "fused" and not fused_ok:
                rows.append(dict(row, ms=None, peak_mib=None))
                continue
            fn = blender_call(cfg, inputs, impl, backward)
            row["ms"] = 1000 * median_seconds(fn, args.warmup, args.runs, args.device)
            row["peak_mib"] = peak_bytes(fn, args.device) / 2 ** 20
            rows.append(row)
    return rows


def blender_report(rows):
    """Table of the blender rows, with fused / plain ratios."""
    plain = {r["pass"]: r for r in rows if r["path"] == "plain"}
    table = []
    for r in rows:
        base = plain[r["pass"]]
        if r["ms"] is None:
            table.append([r["path"], r["pass"], "n/a (no compiled kernel)", "", "", ""])
            continue
        table.append([r["path"], r["pass"], f"{r['ms']:.2f}", f"{r['ms'] / base['ms']:.2f}",
                      f"{r['peak_mib']:.1f}", f"{r['peak_mib'] / max(base['peak_mib'], 1e-9):.2f}"])
    headers = ["blender", "pass", "ms", "ratio", "peak MiB", "ratio"]
    return tabulate(table, headers=headers, tablefmt="github", disable_numparse=True)


def main_blender(args):
    cfg = load_cfg(args.config_file, args.opts, args.device) if args.config_file else get_cfg()
    bm = cfg.MODEL.BLENDMASK
    print(f"[benchmark] blender: {args.blender_instances} instances, image {tuple(args.blender_image)}, "
          f"K={cfg.MODEL.BASIS_MODULE.NUM_BASES}, R={bm.BOTTOM_RESOLUTION}, attn={bm.ATTN_SIZE}, "
          f"sampling_ratio={bm.POOLER_SAMPLING_RATIO}, {bm.POOLER_TYPE}", flush=True)
    rows = measure_blender(cfg, args)
    print(f"\ndevice={args.device} threads={torch.get_num_threads()} runs={args.runs}")
    print(blender_report(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "blender": rows}, indent=2))
    return rows


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.blender:
        return main_blender(args)
    ours = load_cfg(args.config_file, args.opts, args.device)
    baseline = load_cfg(BASELINE, [], args.device, adet_config=False)
    schema = args.schema or guess_schema(args.config_file)
    rows = [measure(Path(args.config_file).stem, ours, schema, args),
            measure("Mask R-CNN R50-FPN (Detectron2)", baseline, "maskrcnn_R_50_FPN_1x", args)]
    print(f"\ndevice={args.device} threads={torch.get_num_threads()} size={args.size} "
          f"batch={args.batch_size} runs={args.runs} train_iters={args.train_iters}")
    print(report(rows))
    print("\ninference stages (median ms; post-process share = post-process / total)")
    print(stage_report(rows))
    if args.profile_train:
        print("\ntraining iteration profiles")
        print(profile_report(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    return rows


if __name__ == "__main__":
    main()
