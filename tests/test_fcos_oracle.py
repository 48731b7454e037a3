"""FCOS equals the reference implementation number for number on the same weights."""
import pytest
import torch


import oracle_utils as ou

MODEL = "fcos_R_50_1x"


@pytest.fixture(scope="module")
def model():
    return ou.reference_model("configs/FCOS-Detection/R_50_1x.yaml", MODEL)


def test_state_dict_keys_match_reference_schema(model):
    ours = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    ref = [(k, shape) for k, shape, _ in ou.schema(MODEL)["state_dict"]]
    assert ours == ref


def test_inference_matches_reference(model):
    meta, payload = ou.oracle(MODEL, "infer_000000005001_S512")
    captured = {}

    def keep_outputs(module, args, output):
        captured["logits"], captured["bbox_reg"], captured["ctrness"] = output[:3]

    handle = model.proposal_generator.fcos_head.register_forward_hook(keep_outputs)
    model.eval()
    with torch.no_grad():
        (result,) = model([ou.inference_input(meta)])
    handle.remove()

    for name in ("logits", "bbox_reg", "ctrness"):
        key = f"fcos_head.{name}"
        for level, (ours, checksum) in enumerate(zip(captured[name], meta["raw_head_outputs"]["checksums"][key])):
            ou.assert_checksum(ours, checksum, f"{key}[{level}]")
            ou.assert_tensors_close(ours, payload["tensors"][key][level], rtol=1e-4, atol=1e-4,
                                    name=f"{key}[{level}]")
    instances = result["instances"]
    assert instances.image_size == tuple(meta["image_size_hw"])
    ou.assert_instances_match(instances, meta)
    ref_levels = meta["extra_fields"]["fpn_levels"]
    assert sorted(instances.fpn_levels.tolist()) == sorted(ref_levels)


def test_training_losses_match_reference(model):
    meta, payload = ou.oracle(MODEL, "train_batch_S512")
    losses = ou.training_losses(model, ou.training_inputs(meta, payload))
    ou.assert_losses_match(losses, meta)
