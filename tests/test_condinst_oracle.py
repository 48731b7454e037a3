"""CondInst and BoxInst equal the reference implementation number for number on the same
weights (the `__cfgbuf` oracle files: see ../shared/reference/README.md)."""
import pytest
import torch


import oracle_utils as ou

MODELS = {
    "condinst_MS_R_50_1x": "configs/CondInst/MS_R_50_1x.yaml",
    "boxinst_MS_R_50_1x": "configs/BoxInst/MS_R_50_1x.yaml",
}
MIN_MASK_IOU = 0.99


@pytest.fixture(scope="module", params=sorted(MODELS))
def named_model(request):
    name = request.param
    return name, ou.restore_condinst_buffers(ou.reference_model(MODELS[name], name))


def test_state_dict_keys_match_reference_schema(named_model):
    name, model = named_model
    ours = [(k, list(v.shape), str(v.dtype).replace("torch.", "")) for k, v in model.state_dict().items()]
    ref = [(k, shape, dtype) for k, shape, dtype in ou.schema(name)["state_dict"]]
    assert ours == ref


def test_inference_matches_reference(named_model):
    name, model = named_model
    meta, payload = ou.oracle(name, "infer_000000005001_S512__cfgbuf")
    if payload is None:  # the raw tensors are shared with the base variant (see its json)
        _, payload = ou.oracle(name, "infer_000000005001_S512")
    captured = {}
    hooks = [
        model.proposal_generator.fcos_head.register_forward_hook(
            lambda m, a, out: captured.update(logits=out[0], bbox_reg=out[1], ctrness=out[2], top_feats=out[3])),
        model.mask_branch.register_forward_hook(lambda m, a, out: captured.update(mask_feats=out[0])),
    ]
    model.eval()
    with torch.no_grad():
        (result,) = model([ou.inference_input(meta)])
    for hook in hooks:
        hook.remove()

    checksums = meta["raw_head_outputs"]["checksums"]
    for name_ in ("logits", "bbox_reg", "ctrness", "top_feats"):
        key = f"fcos_head.{name_}"
        for level, (ours, checksum) in enumerate(zip(captured[name_], checksums[key])):
            ou.assert_checksum(ours, checksum, f"{key}[{level}]")
            if key in payload["tensors"]:
                ou.assert_tensors_close(ours, payload["tensors"][key][level], name=f"{key}[{level}]")
    ou.assert_checksum(captured["mask_feats"], checksums["mask_branch.mask_feats"], "mask_feats")
    # Large-magnitude features (hundreds): 1e-3 absolute, 1e-4 relative.
    ou.assert_tensors_close(captured["mask_feats"], payload["tensors"]["mask_branch.mask_feats"],
                            rtol=1e-4, atol=1e-3, name="mask_branch.mask_feats")

    instances = result["instances"]
    assert instances.image_size == tuple(meta["image_size_hw"])
    ou.assert_instances_match(instances, meta)
    assert instances.pred_masks.shape[1:] == tuple(meta["image_size_hw"])
    assert ou.worst_mask_iou(instances, meta) >= MIN_MASK_IOU
    assert sorted(instances.fpn_levels.tolist()) == sorted(meta["extra_fields"]["fpn_levels"])


def test_training_losses_match_reference(named_model):
    name, model = named_model
    meta, payload = ou.oracle(name, "train_batch_S512__cfgbuf")
    assert not payload["randperm"], "the oracle drew permutations: replay them"
    model.mask_head._iter.zero_()
    losses = ou.training_losses(model, ou.condinst_training_inputs(meta, payload))
    ou.assert_losses_match(losses, meta)
    assert model.mask_head._iter.item() == meta["model_state"]["mask_head._iter_after_forward"]
