"""Model zoo catalog, MODEL_ZOO.md, reference-layout checkpoints, conversion, fine-tuning."""
import importlib.util
import json
import logging
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from detectron2.modeling import build_model

import oracle_utils as ou
from conftest import tiny_opts
from local_http import server  # noqa: F401  (fixture)

from adet import model_zoo
from adet.checkpoint import AdetCheckpointer, IncompatibleCheckpointError, convert_checkpoint, convert_state_dict
from adet.config import get_cfg
from adet.engine import Trainer

REPO = Path(__file__).resolve().parents[1]
PUBLISHED = json.loads((ou.REFERENCE / "model_zoo.json").read_text())["models"]

# reference schema -> (our config, the class-dependent layers)
FCOS_CLS = ("proposal_generator.fcos_head.cls_logits.",)
METHODS = {
    "fcos_R_50_1x": ("configs/FCOS-Detection/R_50_1x.yaml", FCOS_CLS),
    "blendmask_R_50_1x": ("configs/BlendMask/R_50_1x.yaml", FCOS_CLS + ("basis_module.seg_head.6.",)),
    "blendmask_550_R_50_3x": ("configs/BlendMask/550_R_50_3x.yaml", FCOS_CLS + ("basis_module.seg_head.6.",)),
    "condinst_MS_R_50_1x": ("configs/CondInst/MS_R_50_1x.yaml", FCOS_CLS),
    "boxinst_MS_R_50_1x": ("configs/BoxInst/MS_R_50_1x.yaml", FCOS_CLS),
    "solov2_R50_3x": ("configs/SOLOv2/R50_3x.yaml", ("ins_head.cate_pred.",)),
    "sparseinst_r50_giam": ("configs/SparseInst/sparse_inst_r50_giam.yaml", ("decoder.inst_branch.cls_score.",)),
    "sparseinst_r50_base": ("configs/SparseInst/sparse_inst_r50_base.yaml", ("decoder.inst_branch.cls_score.",)),
}


# ------------------------------------------------------------------------------ catalog


def test_catalog_lists_every_published_model_as_published():
    assert list(model_zoo.CATALOG) == [m["name"] for m in PUBLISHED]
    for ref in PUBLISHED:
        entry = model_zoo.info(ref["name"])
        dead = tuple(u for u in ref["urls"] if "DEAD" in ref["url_notes"].get(u, ""))
        prefix = "" if ref["toolbox"] == "AdelaiDet" else "SparseInst/"
        assert (entry.method, entry.toolbox, entry.config) == (ref["method"], ref["toolbox"], prefix + ref["config"])
        assert entry.urls == tuple(u for u in ref["urls"] if u not in dead) and entry.dead_urls == dead
        assert (entry.box_ap, entry.mask_ap, entry.pq) == (ref["box_ap"], ref["mask_ap"], ref["pq"]), ref["name"]
        assert entry.source == ref["source"][0]
        if entry.urls and "huggingface.co" in " ".join(ref["urls"]):
            assert "huggingface.co" in entry.url and "/resolve/" in entry.url  # HuggingFace direct link first


def test_configs_of_resnet_and_dla_models_are_in_the_tree():
    for entry in model_zoo.CATALOG.values():
        if not entry.requires:  # only other backbones may lack a config here
            assert model_zoo.has_config(entry.name), f"{entry.name}: configs/{entry.config} is missing"


def test_lookups_and_their_errors():
    assert model_zoo.get_config_file("FCOS_R_50_1x") == str(REPO / "configs/FCOS-Detection/R_50_1x.yaml")
    assert model_zoo.get_checkpoint_url("CondInst_MS_R_50_1x") == (
        "https://huggingface.co/tianzhi/AdelaiDet-CondInst/resolve/main/CondInst_MS_R_50_1x.pth?download=true")
    assert model_zoo.get_checkpoint_url("BlendMask_R_50_1x") == (
        "https://huggingface.co/ZjuCv/AdelaiDet/resolve/main/R_50_1x.pth")
    with pytest.raises(FileNotFoundError, match=r"nothere/MS_V_39_3x.yaml is not in this tree \(it needs the VoVNet"):
        with pytest.MonkeyPatch.context() as mp:
            mp.setitem(model_zoo.CATALOG, "FCOS_MS_V_39_eSE_3x",
                       replace(model_zoo.info("FCOS_MS_V_39_eSE_3x"), config="nothere/MS_V_39_3x.yaml"))
            model_zoo.get_config_file("FCOS_MS_V_39_eSE_3x")
    with pytest.raises(LookupError, match="no working download link.*cloudstor"):
        model_zoo.get_checkpoint_url("BlendMask_Person_R_50_1x")
    with pytest.raises(KeyError, match="Did you mean FCOS_R_50_1x"):
        model_zoo.info("FCOS_R50_1x")
    available = model_zoo.list_models(available=True)
    assert "FCOS_R_50_1x" in available and "BlendMask_Person_R_50_1x" not in available
    assert set(available) == {m for m in model_zoo.CATALOG if model_zoo.has_config(m) and model_zoo.info(m).urls}
    assert model_zoo.list_models("SOLOv2") == ["SOLOv2_R50_3x", "SOLOv2_R101_3x"]


def test_model_zoo_md_is_the_rendered_catalog():
    text = (REPO / "MODEL_ZOO.md").read_text()
    assert text == model_zoo.render_markdown(), (
        "MODEL_ZOO.md is stale (the catalog or the configs in the tree changed): run python -m adet.model_zoo --write")
    for entry in model_zoo.CATALOG.values():
        assert f"`{entry.name}`" in text and all(u in text for u in entry.urls + entry.dead_urls)


def test_sha256_from_catalog(monkeypatch):
    entry = model_zoo.info("FCOS_R_50_1x")
    assert model_zoo.sha256_for_url(entry.url) is None  # none was published
    monkeypatch.setitem(model_zoo.CATALOG, entry.name, replace(entry, sha256="ab" * 32))
    assert model_zoo.sha256_for_url(entry.url) == "ab" * 32


def test_set_num_classes():
    cfg = model_zoo.get_config("BlendMask_R_50_1x", trained=True)
    assert cfg.MODEL.WEIGHTS == model_zoo.get_checkpoint_url("BlendMask_R_50_1x")
    model_zoo.set_num_classes(cfg, 3)
    assert (cfg.MODEL.FCOS.NUM_CLASSES, cfg.MODEL.BASIS_MODULE.NUM_CLASSES, cfg.MODEL.SOLOV2.NUM_CLASSES,
            cfg.MODEL.SPARSE_INST.DECODER.NUM_CLASSES) == (3, 3, 3, 3)


def test_get_untrained_builds_without_loading():
    model = model_zoo.get("SOLOv2_R50_3x", trained=False, device="cpu")
    assert type(model).__name__ == "SOLOv2" and not model.training
    assert model.ins_head.cate_pred.out_channels == 80


def _tiny_zoo_entry(tmp_path, monkeypatch, url):
    """A catalog entry for the tiny FCOS config, its weights at ``url``."""
    configs = tmp_path / "configs"
    (configs / "Tiny").mkdir(parents=True)
    cfg = get_cfg()
    cfg.merge_from_list(tiny_opts(tmp_path / "out"))
    (configs / "Tiny" / "fcos.yaml").write_text(cfg.dump())
    monkeypatch.setenv("ADET_CONFIGS", str(configs))
    monkeypatch.setenv("ADET_CACHE", str(tmp_path / "cache"))
    entry = model_zoo.ModelInfo(name="Tiny_FCOS", method="FCOS", toolbox="AdelaiDet", config="Tiny/fcos.yaml",
                                urls=(url,), source="test")
    monkeypatch.setitem(model_zoo.CATALOG, entry.name, entry)
    return cfg


def test_get_downloads_and_loads_the_published_weights(server, tmp_path, monkeypatch):  # noqa: F811
    cfg = _tiny_zoo_entry(tmp_path, monkeypatch, server.url("/Tiny_FCOS.pth?download=true"))
    torch.manual_seed(1)
    trained = build_model(cfg)
    path = tmp_path / "Tiny_FCOS.pth"
    torch.save({"model": trained.state_dict(), "iteration": 90000}, path)
    server.files["/Tiny_FCOS.pth"] = (path.read_bytes(), "application/octet-stream")
    model = model_zoo.get("Tiny_FCOS", device="cpu")
    assert not model.training
    for key, value in trained.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert (tmp_path / "cache" / f"127.0.0.1_{server.server_address[1]}" / "Tiny_FCOS.pth").is_file()
    model_zoo.get("Tiny_FCOS", device="cpu")
    assert len(server.requests) == 1  # the second get() used the cache


# ------------------------------------------------------- reference-layout checkpoints


def _reference_checkpoint(schema_name, folder):
    """The deterministic weights in the reference layout, saved as Detectron2's
    checkpointer saves a training run: model, optimizer, scheduler, iteration."""
    state = ou.load_refweights().state_dict_for(ou.schema(schema_name))
    first = next(k for k, v in state.items() if v.is_floating_point())
    optimizer = {"state": {0: {"momentum_buffer": torch.ones_like(state[first])}},
                 "param_groups": [{"lr": 0.01, "momentum": 0.9, "params": list(range(len(state)))}]}
    path = Path(folder) / f"{schema_name}.pth"
    torch.save({"model": state, "optimizer": optimizer, "scheduler": {"last_epoch": 89999, "base_lrs": [0.01]},
                "iteration": 89999}, path)
    return path, state


def convert_tool():
    """tools/convert_checkpoint.py as a module."""
    spec = importlib.util.spec_from_file_location("convert_checkpoint", REPO / "tools" / "convert_checkpoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_convert_checkpoint_command_line(tmp_path):
    state = {"backbone.w": torch.ones(2), "module.head.b": torch.zeros(1)}
    torch.save({"model": state, "optimizer": {"state": {}}, "iteration": 3}, tmp_path / "in.pth")
    out = subprocess.run([sys.executable, str(REPO / "tools" / "convert_checkpoint.py"), str(tmp_path / "in.pth"),
                          str(tmp_path / "out.pth")], capture_output=True, text=True, check=True).stdout
    assert "2 tensors; dropped: optimizer, iteration" in out
    data = torch.load(tmp_path / "out.pth", weights_only=True)
    assert list(data) == ["model"] and sorted(data["model"]) == ["backbone.w", "head.b"]


def _build(config, num_classes=None):
    cfg = get_cfg()
    cfg.merge_from_file(str(REPO / config))
    cfg.MODEL.DEVICE, cfg.MODEL.WEIGHTS = "cpu", ""
    if num_classes:
        model_zoo.set_num_classes(cfg, num_classes)
    return build_model(cfg)


@pytest.fixture(scope="module", params=sorted(METHODS))
def reference_file(request, tmp_path_factory):
    path, state = _reference_checkpoint(request.param, tmp_path_factory.mktemp("ref"))
    return request.param, path, state


@pytest.mark.slow
def test_reference_layout_loads_without_missing_or_unexpected_keys(reference_file, tmp_path, capsys):
    name, path, state = reference_file
    config, _ = METHODS[name]
    model = _build(config)
    checkpointer = AdetCheckpointer(model)
    extra = checkpointer.load(str(path))
    assert sorted(extra) == ["iteration", "optimizer", "scheduler"]  # left alone: this is not a resume
    assert checkpointer.incompatible.missing_keys == [] and checkpointer.incompatible.unexpected_keys == []
    assert checkpointer.incompatible.incorrect_shapes == [] and checkpointer.reinitialized == []
    ours = model.state_dict()
    assert all(torch.equal(ours[k], v) for k, v in state.items())

    converted = tmp_path / "converted.pth"  # tools/convert_checkpoint.py: weights only, loads strictly
    convert_tool().main([str(path), str(converted)])
    assert "dropped: optimizer, scheduler, iteration" in capsys.readouterr().out
    data = torch.load(converted, map_location="cpu", weights_only=True)
    assert list(data) == ["model"]
    fresh = _build(config)
    fresh.load_state_dict(data["model"], strict=True)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in state.items())


@pytest.mark.slow
def test_fine_tuning_reinitialises_only_class_dependent_layers(reference_file, caplog):
    name, path, state = reference_file
    config, class_layers = METHODS[name]
    model = _build(config, num_classes=3)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    checkpointer = AdetCheckpointer(model)
    with _capture(checkpointer.logger) as records:
        checkpointer.load(str(path))
    reinit = sorted(m.key for m in checkpointer.reinitialized)
    assert reinit == sorted(p + s for p in class_layers for s in ("weight", "bias"))
    assert all(m.model_shape[0] in (3, 4) and m.checkpoint_shape[0] in (80, 81) for m in checkpointer.reinitialized)
    ours = model.state_dict()
    for key, value in state.items():
        assert torch.equal(ours[key], initial[key] if key in reinit else value), key
    message = "\n".join(records)
    assert "keep the model's initialisation" in message and all(k in message for k in reinit)
    assert "not found in the checkpoint" not in message  # fvcore's missing-keys warning


class _capture:
    """Messages logged to ``logger`` (fvcore's loggers may not propagate to caplog)."""

    def __init__(self, logger):
        self.logger, self.records = logger, []
        self.handler = logging.Handler()
        self.handler.emit = lambda record: self.records.append(record.getMessage())

    def __enter__(self):
        self.level = self.logger.level
        self.logger.setLevel(logging.INFO)
        self.logger.addHandler(self.handler)
        return self.records

    def __exit__(self, *exc):
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.level)


def test_other_shape_mismatch_is_an_error(make_cfg, tmp_path):
    source = build_model(make_cfg(tmp_path))
    path = tmp_path / "fpn32.pth"
    torch.save({"model": source.state_dict()}, path)
    cfg = get_cfg()
    cfg.merge_from_list(tiny_opts(tmp_path, MODEL__FPN__OUT_CHANNELS=64))
    target = build_model(cfg)
    with pytest.raises(IncompatibleCheckpointError, match=r"backbone\.fpn_lateral3\.weight: \(32, 128, 1, 1\) in "
                                                          r"the checkpoint, \(64, 128, 1, 1\) in the model"):
        AdetCheckpointer(target).load(str(path))
    checkpointer = AdetCheckpointer(target, strict_shapes=False)
    checkpointer.load(str(path))  # skipped with Detectron2's warning
    assert checkpointer.reinitialized == []
    assert "backbone.bottom_up.stem.conv1.weight" not in [k for k, *_ in checkpointer.incompatible.incorrect_shapes]
    assert torch.equal(target.backbone.bottom_up.stem.conv1.weight, source.backbone.bottom_up.stem.conv1.weight)


# ------------------------------------------------------------------ conversion table


def test_conversion_table():
    sd = {"module.backbone.x": 1, "module.proposal_generator.y": 2}
    assert convert_state_dict(sd) == {"backbone.x": 1, "proposal_generator.y": 2}
    ckpt = convert_checkpoint({"model": sd, "optimizer": {}, "scheduler": {}, "iteration": 3, "trainer": {},
                               "__author__": "someone"})
    assert ckpt == {"model": {"backbone.x": 1, "proposal_generator.y": 2}, "__author__": "someone"}
    assert convert_checkpoint({"a.weight": 1}) == {"model": {"a.weight": 1}}  # a bare state dict
    dla = {"base_layer.0.weight": 1, "level3.tree1.conv1.weight": 2, "fc.weight": 3, "fc.bias": 4}
    assert convert_state_dict(dla) == {"backbone.bottom_up.base_layer.0.weight": 1,
                                       "backbone.bottom_up.level3.tree1.conv1.weight": 2}
    # a model that has these keys itself (a bare DLA) gets them unchanged
    assert convert_state_dict(dla, model_keys=dla.keys()) == dla


def test_dla_imagenet_checkpoint_loads_into_fcos_rt(tmp_path):
    model = _build("configs/FCOS-Detection/FCOS_RT/MS_DLA_34_4x_syncbn.yaml")
    prefix = "backbone.bottom_up."
    body = {k[len(prefix):]: v.clone() + 1 for k, v in model.state_dict().items()
            if k.startswith(prefix) and not k.endswith("num_batches_tracked")}
    body.update({"fc.weight": torch.zeros(1000, 512, 1, 1), "fc.bias": torch.zeros(1000)})
    path = tmp_path / "dla34-ba72cf86.pth"
    torch.save(body, path)  # the original file: a bare state dict of the ImageNet model
    checkpointer = AdetCheckpointer(model)
    checkpointer.load(str(path))
    assert checkpointer.incompatible.unexpected_keys == []
    assert not [k for k in checkpointer.incompatible.missing_keys if k.startswith(prefix)
                and not k.endswith("num_batches_tracked")]
    assert torch.equal(model.state_dict()[prefix + "base_layer.0.weight"], body["base_layer.0.weight"])


# ------------------------------------------------------------------------- fine-tuning


@pytest.mark.e2e
def test_trainer_fine_tunes_a_zoo_checkpoint_on_a_custom_dataset(server, shared_data, make_cfg,  # noqa: F811
                                                                    tmp_path, monkeypatch):
    """An 80-class checkpoint (served over HTTP) fine-tuned on fruits_nuts (3 classes)."""
    source = build_model(make_cfg(tmp_path / "src"))
    path = tmp_path / "coco80.pth"
    torch.save({"model": source.state_dict(), "optimizer": {}, "iteration": 89999}, path)
    server.files["/coco80.pth"] = (path.read_bytes(), "application/octet-stream")

    cfg = make_cfg(tmp_path, train=("fruits_nuts",), max_iter=2, MODEL__FCOS__NUM_CLASSES=3,
                   MODEL__WEIGHTS=server.url("/coco80.pth"))
    monkeypatch.setenv("ADET_CACHE", str(tmp_path / "cache"))
    trainer = Trainer(cfg)
    with _capture(trainer.checkpointer.logger) as records:
        trainer.resume_or_load(resume=False)
    assert trainer.start_iter == 0  # fine-tuning starts at 0, not at the checkpoint's iteration
    assert sorted(m.key for m in trainer.checkpointer.reinitialized) == [
        "proposal_generator.fcos_head.cls_logits.bias", "proposal_generator.fcos_head.cls_logits.weight"]
    assert "cls_logits.weight: (80, 32, 3, 3) in the checkpoint -> (3, 32, 3, 3)" in "\n".join(records)
    assert torch.equal(trainer.model.backbone.bottom_up.stem.conv1.weight, source.backbone.bottom_up.stem.conv1.weight)
    trainer.train()
    assert (tmp_path / "model_final.pth").is_file()
