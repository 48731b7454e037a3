"""End-to-end training, evaluation, multi-process launch and resume on real COCO images.

The model is a tiny FCOS (R-18, 32-channel FPN, inputs with short side 128) once
``adet.modeling`` provides it, else Detectron2's RetinaNet of the same size (see conftest).
"""
import glob
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from detectron2.utils.env import seed_all_rng
from conftest import REPO, tiny_opts, train_net_cmd

from adet.engine import Trainer

pytestmark = pytest.mark.e2e


def _run(cmd, timeout=300, env=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def _train(cfg, resume=False):
    seed_all_rng(cfg.SEED)  # what default_setup does in tools/train_net.py
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=resume)
    trainer.train()
    return trainer


def test_train_then_evaluate_coco_tiny(coco_tiny, make_cfg, tmp_path):
    cfg = make_cfg(tmp_path, train=("coco_tiny_train",), test=("adet_test_val4",), max_iter=4)
    trainer = _train(cfg)

    results = trainer._last_eval_results  # EvalHook evaluates after the last iteration
    print({task: {k: v for k, v in r.items() if "-" not in k} for task, r in results.items()})
    assert set(results) == {"bbox"}
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
        assert key in results["bbox"]
    assert math.isfinite(results["bbox"]["AP"])
    assert os.path.isfile(tmp_path / "inference" / "adet_test_val4" / "coco_instances_results.json")

    assert (tmp_path / "metrics.json").read_text().count('"total_loss"') >= 1
    assert glob.glob(str(tmp_path / "events.out.tfevents.*"))
    last = (tmp_path / "last_checkpoint").read_text().strip()
    assert last == "model_final.pth" and (tmp_path / last).is_file()
    assert torch.load(tmp_path / last, map_location="cpu", weights_only=False)["iteration"] == 3


def test_resume_reaches_same_weights(coco_tiny, make_cfg, tmp_path):
    """4 iterations in one go == 2 iterations, a crash in the 4th, then --resume."""
    opts = dict(train=("adet_test_train2",), max_iter=4, SOLVER__CHECKPOINT_PERIOD=2,
                SOLVER__BASE_LR=0.01, SOLVER__STEPS=(3,), DATALOADER__ASPECT_RATIO_GROUPING=False)
    _train(make_cfg(tmp_path / "a", **opts))

    class Crash(Exception):
        pass

    cfg_b = make_cfg(tmp_path / "b", **opts)
    seed_all_rng(cfg_b.SEED)
    crashing = Trainer(cfg_b)
    crashing.resume_or_load(resume=False)
    run_step = crashing.run_step

    def crash_at_3():
        if crashing.iter == 3:
            raise Crash()
        run_step()

    crashing.run_step = crash_at_3
    with pytest.raises(Crash):
        crashing.train()
    saved = (tmp_path / "b" / "last_checkpoint").read_text()
    assert saved == "model_0000001.pth"  # after iteration 1 (the 2nd); fvcore's names
    del crashing

    seed_all_rng(cfg_b.SEED + 1)  # resuming must not depend on the initial weights
    resumed = Trainer(cfg_b)  # what `tools/train_net.py --resume` does
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 2
    assert resumed.scheduler.last_epoch == 2
    resumed.train()

    a = torch.load(tmp_path / "a" / "model_final.pth", map_location="cpu", weights_only=False)
    b = torch.load(tmp_path / "b" / "model_final.pth", map_location="cpu", weights_only=False)
    assert a["iteration"] == b["iteration"] == 3
    assert a["model"].keys() == b["model"].keys()
    start = torch.load(tmp_path / "b" / saved, map_location="cpu", weights_only=False)
    moved = max((a["model"][k] - start["model"][k]).abs().max().item() for k in a["model"])
    assert moved > 1e-4  # the last 2 iterations changed the weights
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=1e-4, atol=1e-6, msg=k)
    opt_a, opt_b = a["trainer"]["_trainer"]["optimizer"], b["trainer"]["_trainer"]["optimizer"]
    assert len(opt_a["state"]) == len(opt_b["state"]) > 0
    for sa, sb in zip(opt_a["state"].values(), opt_b["state"].values()):
        torch.testing.assert_close(sa["momentum_buffer"], sb["momentum_buffer"],
                                   rtol=1e-4, atol=1e-6)


def test_ddp_two_cpu_processes_cli(coco_tiny, tmp_path):
    """``tools/train_net.py --num-gpus 2 MODEL.DEVICE cpu``: gloo, 2 ranks, distributed eval."""
    val_json, val_root = coco_tiny["adet_test_val4"]
    opts = tiny_opts(tmp_path, train=("coco_tiny_train",), test=("my_val",), max_iter=3)
    _run(train_net_cmd("--num-gpus", 2, "--dist-url", "auto",
                       "--register-coco", "my_val", val_json, val_root, *opts))
    log0 = (tmp_path / "log.txt").read_text()
    assert "World size: 2" in log0
    assert (tmp_path / "log.txt.rank1").is_file()
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    ckpt = torch.load(tmp_path / "model_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["iteration"] == 2
    assert not any(k.startswith("module.") for k in ckpt["model"])  # DDP wrapper not saved
    assert "copypaste: AP,AP50" in log0  # evaluation gathered from both ranks
    pictures = sorted((tmp_path / "pictures").glob("*.jpg"))  # --vis-images defaults to 4
    assert len(pictures) == 4 and all(p.stat().st_size > 0 for p in pictures)


def test_cli_eval_only(coco_tiny, make_cfg, tmp_path):
    """Train 2 iterations in-process, then ``--eval-only MODEL.WEIGHTS`` from the CLI."""
    _train(make_cfg(tmp_path / "train", max_iter=2))
    val_json, val_root = coco_tiny["adet_test_val4"]
    opts = tiny_opts(tmp_path / "eval", test=("my_val",),
                     MODEL__WEIGHTS=tmp_path / "train" / "model_final.pth")
    proc = _run(train_net_cmd("--eval-only", "--register-coco", "my_val", val_json, val_root,
                              *opts))
    assert "copypaste: AP,AP50" in proc.stdout + proc.stderr
    assert (tmp_path / "eval" / "inference" / "my_val" / "coco_instances_results.json").is_file()


def test_launch_under_torchrun(tmp_path):
    """Processes started by torchrun join through env:// and get Detectron2's local group."""
    script = tmp_path / "probe.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        import torch.distributed as dist
        from detectron2.utils import comm
        from adet.engine import launch

        def main(out):
            t = comm.all_gather(comm.get_rank())
            with open(f"{{out}}/rank{{comm.get_rank()}}", "w") as f:
                f.write(f"{{comm.get_world_size()}} {{comm.get_local_rank()}} "
                        f"{{comm.get_local_size()}} {{dist.get_backend()}} {{t}}")

        launch(main, 1, device="cpu", args=({str(tmp_path)!r},))
    """))
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone",
          "--nproc_per_node", "2", str(script)], timeout=120)
    for rank in (0, 1):
        assert (tmp_path / f"rank{rank}").read_text() == f"2 {rank} 2 gloo [0, 1]"
