"""BlendMask equals the reference implementation on the same weights: bases, detections
with their masks, and every training loss, for the R_50_1x and 550_R_50_3x models."""
import pytest
import torch


import oracle_utils as ou

MODELS = {
    "blendmask_R_50_1x": "configs/BlendMask/R_50_1x.yaml",
    "blendmask_550_R_50_3x": "configs/BlendMask/550_R_50_3x.yaml",
}
MASK_IOU_MIN = 0.99


@pytest.fixture(scope="module", params=sorted(MODELS))
def model_and_name(request):
    name = request.param
    return ou.reference_model(MODELS[name], name), name


def test_state_dict_keys_match_reference_schema(model_and_name):
    model, name = model_and_name
    ours = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    assert ours == [(k, shape) for k, shape, _ in ou.schema(name)["state_dict"]]


def test_inference_matches_reference(model_and_name):
    model, name = model_and_name
    meta, payload = ou.oracle(name, "infer_000000005001_S512")
    captured = {}

    def keep_head(module, args, output):
        captured["logits"], captured["bbox_reg"], captured["ctrness"], captured["top_feats"] = output[:4]

    def keep_bases(module, args, output):
        captured["bases"] = output[0]["bases"]

    hooks = [model.proposal_generator.fcos_head.register_forward_hook(keep_head),
             model.basis_module.register_forward_hook(keep_bases)]
    model.eval()
    with torch.no_grad():
        (result,) = model([ou.inference_input(meta)])
    for h in hooks:
        h.remove()

    checksums = meta["raw_head_outputs"]["checksums"]
    for name_, key in (("bases", "basis_module.bases"), ("logits", "fcos_head.logits"),
                       ("bbox_reg", "fcos_head.bbox_reg"), ("ctrness", "fcos_head.ctrness"),
                       ("top_feats", "fcos_head.top_feats")):
        for level, (ours, checksum) in enumerate(zip(captured[name_], checksums[key])):
            ou.assert_checksum(ours, checksum, f"{key}[{level}]")
            if key in payload["tensors"]:
                # bases reach a few hundred: 1e-3 absolute for large-magnitude tensors
                atol = 1e-3 if key == "basis_module.bases" else 1e-4
                ou.assert_tensors_close(ours, payload["tensors"][key][level], rtol=1e-4, atol=atol,
                                        name=f"{key}[{level}]")

    instances = result["instances"]
    assert instances.image_size == tuple(meta["image_size_hw"])
    ou.assert_instances_match(instances, meta)
    assert instances.pred_masks.shape[1:] == tuple(meta["image_size_hw"])
    assert ou.worst_mask_iou(instances, meta) >= MASK_IOU_MIN


def test_training_losses_match_reference(model_and_name):
    model, name = model_and_name
    meta, payload = ou.oracle(name, "train_batch_S512")
    losses = ou.training_losses(model, ou.blendmask_training_inputs(meta, payload))
    ou.assert_losses_match(losses, meta)
