"""adet's config against the reference toolboxes' configs.

Facts come from ../shared/reference (README.md there): schemas/*.json hold the fully
merged config of one reference YAML each; configs.json lists, for every reference YAML,
the keys whose values differ from that toolbox's defaults. So for every reference YAML:

    our get_cfg() + its configs.json diff  ==  the reference's merged config,

which checks our defaults (against the schemas) and our YAML files (which must give the
same merged config as that construction).
"""
import json
import os
from pathlib import Path

import pytest

from adet.config import (
    ADET_ONLY_KEYS,
    FCOS_LOSS_NORMALIZERS,
    SPARSEINST_TOOLBOX_DEFAULTS,
    add_adet_config,
    get_cfg,
)
from detectron2.config import get_cfg as detectron2_get_cfg

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
SHARED = Path(os.environ.get("ADET_SHARED", REPO.parent / "shared"))
REFERENCE = SHARED / "reference"

# Keys whose value in the schemas depends on how they were produced, not on the toolbox:
# the schemas were dumped on CPU, with the weights left empty (deterministic weights are
# loaded instead, see refweights.py).
IGNORED_KEYS = {"MODEL.DEVICE", "MODEL.WEIGHTS"}

# Schemas of baselines that use Detectron2's own config files, not ours.
DETECTRON2_SCHEMAS = {"maskrcnn_R_50_FPN_1x"}

# Reference YAMLs we deliberately do not ship (say why in the method's README); none
# since the VoVNet backbone landed.
NOT_SHIPPED = set()

# Methods whose reference YAMLs must all be shipped by now (others: checked if present).
REQUIRED_PREFIXES = ("AdelaiDet/FCOS-Detection/",)

if not REFERENCE.is_dir():  # pragma: no cover - the facts travel with the repo's shared/
    pytest.skip(f"reference facts not found at {REFERENCE}", allow_module_level=True)


def _load_json(path):
    return json.loads(Path(path).read_text())


REFERENCE_DIFFS = _load_json(REFERENCE / "configs.json")["configs"]
SCHEMAS = {p.stem: _load_json(p) for p in sorted((REFERENCE / "schemas").glob("*.json"))}
TOOLBOX_SCHEMAS = sorted(set(SCHEMAS) - DETECTRON2_SCHEMAS)


def flatten(node, prefix=""):
    """{"A.B.C": value} of a (nested) config; tuples become lists, as in the JSON facts."""
    out = {}
    for key, value in node.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = json.loads(json.dumps(value))
    return out


def same(a, b):
    """Type-strict equality (1 != 1.0 != True), as a YAML value must match the default's type."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def reference_name(schema):
    """configs.json name of a schema's YAML: "AdelaiDet/configs/X" -> "AdelaiDet/X"."""
    return schema["config_file"].replace("/configs/", "/", 1)


def our_yaml(name):
    """Where we ship the YAML of reference ``name`` (AdelaiDet's layout; SparseInst's
    files go to configs/SparseInst/)."""
    toolbox, rel = name.split("/", 1)
    return CONFIGS / rel if toolbox == "AdelaiDet" else CONFIGS / toolbox / rel


def reference_cfg(name):
    """Our defaults + the reference YAML's diff: what the reference YAML merges to."""
    cfg = get_cfg()
    if name.startswith("SparseInst/"):
        # configs.json diffs SparseInst YAMLs against SparseInst's own defaults.
        cfg.merge_from_list([x for kv in SPARSEINST_TOOLBOX_DEFAULTS.items() for x in kv])
    cfg.merge_from_list([x for kv in REFERENCE_DIFFS[name].items() for x in kv])
    return cfg


def mismatches(ours, reference):
    """Keys of the flattened ``reference`` missing from, or different in, ``ours``."""
    problems = []
    for key, value in sorted(reference.items()):
        if key in IGNORED_KEYS:
            continue
        if key not in ours:
            problems.append(f"{key}: missing (reference {value!r})")
        elif not same(ours[key], value):
            problems.append(f"{key}: ours {ours[key]!r} != reference {value!r}")
    return problems


# (a) defaults ------------------------------------------------------------------------


@pytest.mark.parametrize("schema_name", TOOLBOX_SCHEMAS)
def test_defaults_plus_reference_diff_give_schema_config(schema_name):
    schema = SCHEMAS[schema_name]
    name = reference_name(schema)
    assert name in REFERENCE_DIFFS, f"{name} not in configs.json"
    problems = mismatches(flatten(reference_cfg(name)), flatten(schema["config"]))
    assert not problems, "\n".join(problems)


SHIPPED_SCHEMAS = [s for s in TOOLBOX_SCHEMAS if our_yaml(reference_name(SCHEMAS[s])).exists()]


@pytest.mark.parametrize("schema_name", SHIPPED_SCHEMAS)
def test_shipped_yaml_gives_schema_config(schema_name):
    schema = SCHEMAS[schema_name]
    path = our_yaml(reference_name(schema))
    cfg = get_cfg()
    cfg.merge_from_file(str(path))
    problems = mismatches(flatten(cfg), flatten(schema["config"]))
    assert not problems, "\n".join(problems)


def test_every_key_comes_from_a_reference_or_is_documented():
    """No invented keys: each of our keys is in some reference config, or adet-only."""
    known = set(ADET_ONLY_KEYS)
    for schema in SCHEMAS.values():
        known |= set(flatten(schema["config"]))
    extra = sorted(set(flatten(get_cfg())) - known)
    assert not extra, extra


@pytest.mark.parametrize("schema_name", sorted(DETECTRON2_SCHEMAS))
def test_upstream_detectron2_keys_present_with_upstream_defaults(schema_name):
    """Keys that newer Detectron2 has and v0.6 may lack: present, with upstream's value."""
    reference = flatten(SCHEMAS[schema_name]["config"])
    ours = flatten(get_cfg())
    upstream_only = set(reference) - set(flatten(detectron2_get_cfg()))
    problems = mismatches(ours, {k: reference[k] for k in upstream_only})
    problems += [f"{k}: missing" for k in set(reference) - set(ours)]
    assert not problems, "\n".join(problems)


def test_upstream_keys_are_kept_when_detectron2_has_them():
    cfg = detectron2_get_cfg()
    cfg.SOLVER.BASE_LR_END = 0.5  # as if an upstream Detectron2 defined it
    add_adet_config(cfg)
    assert cfg.SOLVER.BASE_LR_END == 0.5


@pytest.mark.parametrize("key", sorted(SPARSEINST_TOOLBOX_DEFAULTS))
def test_sparseinst_toolbox_defaults_differ_from_ours(key):
    """Keys whose SparseInst toolbox default differs from ours (SparseInst YAMLs set them):
    a Detectron2 key keeps Detectron2's value; an added key has our own default."""
    ours = flatten(get_cfg())
    assert key in ours and not same(ours[key], SPARSEINST_TOOLBOX_DEFAULTS[key])
    d2 = flatten(detectron2_get_cfg())
    if key in d2:
        assert same(ours[key], d2[key])


def test_adet_only_fcos_keys():
    fcos = get_cfg().MODEL.FCOS
    assert fcos.NORM_REG_TARGETS is True
    assert fcos.CENTERNESS_ON_REG is True
    assert fcos.USE_RELU is True
    assert fcos.LOSS_NORMALIZER_CLS in FCOS_LOSS_NORMALIZERS


@pytest.mark.parametrize("normalizer", FCOS_LOSS_NORMALIZERS)
def test_fcos_loss_normalizer_values_merge(normalizer):
    cfg = get_cfg()
    cfg.merge_from_list(["MODEL.FCOS.LOSS_NORMALIZER_CLS", normalizer])
    assert cfg.MODEL.FCOS.LOSS_NORMALIZER_CLS == normalizer


def test_get_cfg_returns_independent_copies():
    a, b = get_cfg(), get_cfg()
    a.MODEL.FCOS.FPN_STRIDES.append(256)
    assert b.MODEL.FCOS.FPN_STRIDES == [8, 16, 32, 64, 128]


# (b) our YAML files ------------------------------------------------------------------


ALL_YAMLS = sorted(CONFIGS.rglob("*.yaml"))


@pytest.mark.parametrize("path", ALL_YAMLS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_yaml_loads(path):
    get_cfg().merge_from_file(str(path))


# Reference YAMLs to compare: the required ones, the ones shipped at the time the tests
# run (other methods' YAMLs get checked as soon as they land); NOT_SHIPPED excluded.
CHECKED_REFERENCE_YAMLS = sorted(
    n
    for n in REFERENCE_DIFFS
    if (n.startswith(REQUIRED_PREFIXES) or our_yaml(n).exists()) and n not in NOT_SHIPPED
)


def test_not_shipped_yamls_are_absent():
    present = [name for name in sorted(NOT_SHIPPED) if our_yaml(name).exists()]
    assert not present, f"{present} listed as not shipped but exist"


@pytest.mark.parametrize("name", CHECKED_REFERENCE_YAMLS)
def test_yaml_equals_reference_yaml(name):
    """Each reference YAML we ship merges to exactly what the reference's merges to."""
    path = our_yaml(name)
    assert path.exists(), f"{path.relative_to(REPO)} missing"
    cfg = get_cfg()
    cfg.merge_from_file(str(path))
    expected = flatten(reference_cfg(name))
    problems = mismatches(flatten(cfg), expected)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("prefix", REQUIRED_PREFIXES)
def test_no_yaml_without_reference_counterpart(prefix):
    method_dir = CONFIGS / prefix.split("/", 1)[1]
    ours = {str(p.relative_to(CONFIGS)) for p in method_dir.rglob("*.yaml")}
    reference = {n.split("/", 1)[1] for n in REFERENCE_DIFFS if n.startswith(prefix)}
    assert ours - reference == set(), "YAMLs with no reference counterpart"


# (c) wrong keys ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "yaml_text",
    [
        "MODEL:\n  FCOS:\n    NUM_CLASS: 80\n",  # typo of NUM_CLASSES
        "MODEL:\n  NOT_A_NODE:\n    X: 1\n",
        "NOT_A_KEY: 1\n",
    ],
)
def test_wrong_key_raises(tmp_path, yaml_text):
    path = tmp_path / "bad.yaml"
    path.write_text(f'_BASE_: "{CONFIGS / "FCOS-Detection" / "Base-FCOS.yaml"}"\n{yaml_text}')
    with pytest.raises(KeyError, match="Non-existent config key"):
        get_cfg().merge_from_file(str(path))


def test_wrong_value_type_raises(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("MODEL:\n  FCOS:\n    NUM_CLASSES: eighty\n")
    with pytest.raises(ValueError, match="Type mismatch"):
        get_cfg().merge_from_file(str(path))
