"""SparseInst (GIAM and base IAM decoders) equals the reference number for number on the
same deterministic weights: decoder outputs, instances and training losses."""
import pytest
import torch


import oracle_utils as ou

pytest.importorskip("scipy", reason="the Hungarian matcher needs scipy")

MODELS = {
    "sparseinst_r50_giam": "configs/SparseInst/sparse_inst_r50_giam.yaml",
    "sparseinst_r50_base": "configs/SparseInst/sparse_inst_r50_base.yaml",
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def named_model(request):
    return request.param, ou.reference_model(MODELS[request.param], request.param)


@pytest.fixture(scope="module")
def inference(named_model):
    name, model = named_model
    meta, payload = ou.oracle(name, "infer_000000005001_S512")
    captured = {}
    handle = model.decoder.register_forward_hook(lambda module, args, output: captured.update(output))
    model.eval()
    with torch.no_grad():
        (result,) = model([ou.inference_input(meta, rgb=True)])
    handle.remove()
    return meta, payload, captured, result["instances"]


def test_state_dict_keys_match_reference_schema(named_model):
    name, model = named_model
    ours = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    assert ours == [(k, shape) for k, shape, _ in ou.schema(name)["state_dict"]]


def test_decoder_outputs_match_reference(inference):
    meta, payload, captured, _ = inference
    ref, checksums = payload["tensors"], meta["raw_head_outputs"]["checksums"]
    for key in ("pred_logits", "pred_scores", "pred_masks"):
        ou.assert_checksum(captured[key], checksums[f"decoder.{key}"], f"decoder.{key}")
    ou.assert_tensors_close(captured["pred_logits"], ref["decoder.pred_logits"], name="pred_logits")
    ou.assert_tensors_close(captured["pred_scores"], ref["decoder.pred_scores"], name="pred_scores")
    masks = captured["pred_masks"]
    first = ref["decoder.pred_masks_first_queries"]
    ou.assert_tensors_close(masks[:, : first.shape[1]], first, name="pred_masks[:16]")
    # Per-query sums of ~22k values: 1e-3 absolute (large-magnitude tolerance) + 1e-4 relative.
    ou.assert_tensors_close(masks.double().sum((2, 3)), ref["decoder.pred_masks_per_query_sum"], atol=1e-3,
                            name="per-query sum")
    ou.assert_tensors_close(masks.double().abs().sum((2, 3)), ref["decoder.pred_masks_per_query_abs_sum"],
                            atol=1e-3, name="per-query abs sum")


def test_instances_match_reference(inference):
    meta, _, _, instances = inference
    assert instances.image_size == tuple(meta["image_size_hw"])
    ou.assert_instances_match(instances, meta, check_boxes=False)
    assert ou.worst_mask_iou_in_order(instances, meta) >= 0.99
    areas = instances.pred_masks.sum((1, 2)).tolist()
    assert areas == [ref["pred_mask_area"] for ref in meta["instances"]]


def test_training_losses_match_reference(named_model):
    name, model = named_model
    meta, payload = ou.oracle(name, "train_batch_S512")
    losses = ou.training_losses(model, ou.sparseinst_training_inputs(meta, payload))
    ou.assert_losses_match(losses, meta)
