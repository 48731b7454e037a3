"""SOLOv2 equals the reference implementation number for number on the same weights."""
import pytest
import torch


import oracle_utils as ou

MODEL = "solov2_R50_3x"


@pytest.fixture(scope="module")
def model():
    return ou.reference_model("configs/SOLOv2/R50_3x.yaml", MODEL)


def test_state_dict_keys_match_reference_schema(model):
    ours = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    ref = [(k, shape) for k, shape, _ in ou.schema(MODEL)["state_dict"]]
    assert ours == ref


@pytest.fixture(scope="module")
def inference(model):
    meta, payload = ou.oracle(MODEL, "infer_000000005001_S512")
    captured = {"cate_pred": [], "kernel_pred": []}
    hooks = [getattr(model.ins_head, name).register_forward_hook(
        lambda module, args, output, name=name: captured[name].append(output))
        for name in captured]
    model.eval()
    with torch.no_grad():
        (result,) = model([ou.inference_input(meta)])
    for hook in hooks:
        hook.remove()
    return meta, payload, captured, result["instances"]


def test_head_outputs_match_reference(inference):
    meta, payload, captured, _ = inference
    for name in ("cate_pred", "kernel_pred"):
        key = f"ins_head.{name}"
        checksums = meta["raw_head_outputs"]["checksums"][key]
        assert len(captured[name]) == len(checksums)
        for level, (ours, checksum) in enumerate(zip(captured[name], checksums)):
            ou.assert_checksum(ours, checksum, f"{key}[{level}]")
            ou.assert_tensors_close(ours, payload["tensors"][key][level], name=f"{key}[{level}]")


def test_instances_match_reference(inference):
    meta, _, _, instances = inference
    assert instances.image_size == tuple(meta["image_size_hw"])
    assert instances.pred_masks.shape[-2:] == tuple(meta["image_size_hw"])
    # The reference emits zero boxes; ours come from the masks, so boxes are not compared.
    ou.assert_instances_match(instances, meta, check_boxes=False)
    assert min(ou.mask_ious_without_boxes(instances, meta)) >= 0.99


def test_boxes_enclose_masks(inference):
    instances = inference[3]
    for box, mask in zip(instances.pred_boxes.tensor[:5], instances.pred_masks[:5]):
        ys, xs = mask.nonzero(as_tuple=True)
        assert box.tolist() == [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]


def test_training_losses_match_reference(model):
    meta, payload = ou.oracle(MODEL, "train_batch_S512")
    losses = ou.training_losses(model, ou.solov2_training_inputs(meta, payload))
    ou.assert_losses_match(losses, meta)
