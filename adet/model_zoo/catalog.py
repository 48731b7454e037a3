"""The published models of AdelaiDet and SparseInst, as facts: config, download URLs, AP.

Compiled from the toolboxes' READMEs (AdelaiDet at 36721221, 2024-03-05: README.md,
MODEL_ZOO.md and configs/*/README.md; SparseInst at a8990153, 2023-10-20: README.md).
Every published row is listed, including models whose config is not in this tree
(`adet.model_zoo.has_config`) and whose only link is dead (``dead_urls``). ``urls`` keeps the
published order (HuggingFace first; for a HuggingFace ``/blob/`` page the direct
``/resolve/`` form comes first). AP is COCO val2017 unless ``dataset`` says otherwise.
No sha256 was published for any of these files; ``sha256`` holds one where it becomes
known, and downloads are then checked against it.

MODEL_ZOO.md is generated from this table: ``python -m adet.model_zoo --write``.
"""
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

__all__ = ["ModelInfo", "SOURCES", "CATALOG"]

SOURCES = {
    "AdelaiDet": "https://github.com/aim-uofa/AdelaiDet (36721221, 2024-03-05)",
    "SparseInst": "https://github.com/hustvl/SparseInst (a8990153, 2023-10-20)",
}


@dataclass(frozen=True)
class ModelInfo:
    """One published model.

    Attributes:
        name: catalog name (``adet.model_zoo.get(name)``).
        method: FCOS, FCOS-RT, BlendMask, BlendMask-Panoptic, BlendMask-Person, CondInst,
            BoxInst, SOLOv2 or SparseInst.
        toolbox: who published it, a key of ``SOURCES``.
        config: its config, relative to this repository's ``configs/`` folder (the
            reference's name).
        urls: download URLs as published, newest hosting first; ``dead_urls``: published
            links to hosts that are gone (CloudStor).
        box_ap, mask_ap, pq: published accuracy on ``dataset``; ``source``: the file of
            ``toolbox`` that gives it.
        sha256: of the checkpoint file, where known.
        requires: what the config needs besides adet's ResNet/DLA models (e.g. "BiFPN
            backbone"), named when the config cannot be found.
        note: what else to know.
    """

    name: str
    method: str
    toolbox: str
    config: str
    urls: Tuple[str, ...]
    source: str
    dead_urls: Tuple[str, ...] = ()
    box_ap: Optional[float] = None
    mask_ap: Optional[float] = None
    pq: Optional[float] = None
    dataset: str = "COCO val2017"
    sha256: Optional[str] = None
    requires: str = ""
    note: str = ""

    @property
    def url(self) -> Optional[str]:
        """The first published URL that still works, None when only dead links exist."""
        return self.urls[0] if self.urls else None


def _m(**kwargs) -> ModelInfo:
    return ModelInfo(**kwargs)


_MODELS = (
    _m(name='FCOS_R_50_1x', method='FCOS', toolbox='AdelaiDet', config='FCOS-Detection/R_50_1x.yaml',
       urls=('https://huggingface.co/tianzhi/AdelaiDet-FCOS/resolve/main/FCOS_R_50_1x.pth?download=true',),
       dead_urls=('https://cloudstor.aarnet.edu.au/plus/s/glqFc13cCoEyHYy/download',),
       box_ap=38.7, source='configs/FCOS-Detection/README.md'),
    _m(name='FCOS_MS_R_50_2x', method='FCOS', toolbox='AdelaiDet', config='FCOS-Detection/MS_R_50_2x.yaml',
       urls=('https://huggingface.co/tianzhi/AdelaiDet-FCOS/resolve/main/FCOS_MS_R_50_2x.pth?download=true',),
       box_ap=41.0, source='configs/FCOS-Detection/README.md'),
    _m(name='FCOS_MS_R_101_2x', method='FCOS', toolbox='AdelaiDet', config='FCOS-Detection/MS_R_101_2x.yaml',
       urls=('https://huggingface.co/tianzhi/AdelaiDet-FCOS/resolve/main/FCOS_MS_R_101_2x.pth?download=true',),
       box_ap=43.1, source='configs/FCOS-Detection/README.md'),
    _m(name='FCOS_MS_X_101_32x8d_2x', method='FCOS', toolbox='AdelaiDet', config='FCOS-Detection/MS_X_101_32x8d_2x.yaml',
       urls=('https://huggingface.co/tianzhi/AdelaiDet-FCOS/resolve/main/FCOS_MS_X_101_32x8d_2x.pth?download=true',),
       box_ap=43.9, source='configs/FCOS-Detection/README.md'),
    _m(name='FCOS_MS_X_101_64x4d_2x', method='FCOS', toolbox='AdelaiDet', config='FCOS-Detection/MS_X_101_64x4d_2x.yaml',
       urls=('https://huggingface.co/tianzhi/AdelaiDet-FCOS/resolve/main/FCOS_MS_X_101_64x4d_2x.pth?download=true',),
       box_ap=44.7, source='configs/FCOS-Detection/README.md'),
    _m(name='FCOS_MS_X_101_32x8d_dcnv2_2x', method='FCOS', toolbox='AdelaiDet', config='FCOS-Detection/MS_X_101_32x8d_2x_dcnv2.yaml',
       urls=('https://huggingface.co/tianzhi/AdelaiDet-FCOS/resolve/main/FCOS_MS_X_101_32x8d_dcnv2_2x.pth?download=true',),
       box_ap=46.6, source='configs/FCOS-Detection/README.md'),
    _m(name='FCOS_R_50_1x_iou', method='FCOS', toolbox='AdelaiDet', config='FCOS-Detection/R_50_1x_iou.yaml',
       urls=('https://huggingface.co/tianzhi/AdelaiDet-FCOS/resolve/main/FCOS_R_50_1x_iou.pth?download=true',),
       box_ap=39.4, source='configs/FCOS-Detection/README.md'),
    _m(name='FCOS_MS_R_50_2x_iou', method='FCOS', toolbox='AdelaiDet', config='FCOS-Detection/MS_R_50_2x_iou.yaml',
       urls=('https://huggingface.co/tianzhi/AdelaiDet-FCOS/resolve/main/FCOS_MS_R_50_2x_iou.pth?download=true',),
       box_ap=41.5, source='configs/FCOS-Detection/README.md'),
    _m(name='FCOS_MS_R_101_2x_iou', method='FCOS', toolbox='AdelaiDet', config='FCOS-Detection/MS_R_101_2x_iou.yaml',
       urls=('https://huggingface.co/tianzhi/AdelaiDet-FCOS/resolve/main/FCOS_MS_R_101_2x_iou.pth?download=true',),
       box_ap=43.5, source='configs/FCOS-Detection/README.md'),
    _m(name='FCOS_MS_X_101_32x8d_2x_iou', method='FCOS', toolbox='AdelaiDet', config='FCOS-Detection/MS_X_101_32x8d_2x_iou.yaml',
       urls=('https://huggingface.co/tianzhi/AdelaiDet-FCOS/resolve/main/FCOS_MS_X_101_32x8d_2x_iou.pth?download=true',),
       box_ap=44.5, source='configs/FCOS-Detection/README.md'),
    _m(name='FCOS_MS_X_101_32x8d_2x_dcnv2_iou', method='FCOS', toolbox='AdelaiDet', config='FCOS-Detection/MS_X_101_32x8d_2x_dcnv2_iou.yaml',
       urls=('https://huggingface.co/tianzhi/AdelaiDet-FCOS/resolve/main/FCOS_MS_X_101_32x8d_2x_dcnv2_iou.pth?download=true',),
       box_ap=47.4, source='configs/FCOS-Detection/README.md'),
    _m(name='FCOS_RT_MS_DLA_34_4x_shtw', method='FCOS-RT', toolbox='AdelaiDet', config='FCOS-Detection/FCOS_RT/MS_DLA_34_4x_syncbn_shared_towers.yaml',
       urls=('https://huggingface.co/tianzhi/AdelaiDet-FCOS/resolve/main/FCOS_RT_MS_DLA_34_4x_syncbn_shared_towers.pth?download=true',),
       box_ap=39.1, source='configs/FCOS-Detection/README.md'),
    _m(name='FCOS_RT_MS_DLA_34_4x', method='FCOS-RT', toolbox='AdelaiDet', config='FCOS-Detection/FCOS_RT/MS_DLA_34_4x_syncbn.yaml',
       urls=('https://huggingface.co/tianzhi/AdelaiDet-FCOS/resolve/main/FCOS_RT_MS_DLA_34_4x_syncbn.pth?download=true',),
       box_ap=40.3, source='configs/FCOS-Detection/README.md'),
    _m(name='FCOS_RT_MS_R_50_4x', method='FCOS-RT', toolbox='AdelaiDet', config='FCOS-Detection/FCOS_RT/MS_R_50_4x_syncbn.yaml',
       urls=('https://huggingface.co/tianzhi/AdelaiDet-FCOS/resolve/main/FCOS_RT_MS_R_50_4x_syncbn.pth?download=true',),
       box_ap=40.2, source='configs/FCOS-Detection/README.md'),
    _m(name='FCOS_RT_MS_DLA_34_4x_shtw_bn', method='FCOS-RT', toolbox='AdelaiDet', config='FCOS-Detection/FCOS_RT/MS_DLA_34_4x_syncbn_shared_towers_bn_head.yaml',
       urls=('https://huggingface.co/tianzhi/AdelaiDet-FCOS/resolve/main/FCOS_RT_MS_DLA_34_4x_syncbn_shared_towers_bn_head.pth?download=true',),
       box_ap=38.9, source='configs/FCOS-Detection/README.md'),
    _m(name='FCOS_RT_MS_DLA_34_4x_bn', method='FCOS-RT', toolbox='AdelaiDet', config='FCOS-Detection/FCOS_RT/MS_DLA_34_4x_syncbn_bn_head.yaml',
       urls=('https://huggingface.co/tianzhi/AdelaiDet-FCOS/resolve/main/FCOS_RT_MS_DLA_34_4x_syncbn_bn_head.pth?download=true',),
       box_ap=39.4, source='configs/FCOS-Detection/README.md'),
    _m(name='FCOS_RT_MS_R_50_4x_bn', method='FCOS-RT', toolbox='AdelaiDet', config='FCOS-Detection/FCOS_RT/MS_R_50_4x_syncbn_bn_head.yaml',
       urls=('https://huggingface.co/tianzhi/AdelaiDet-FCOS/resolve/main/FCOS_RT_MS_R_50_4x_syncbn_bn_head.pth?download=true',),
       box_ap=39.3, source='configs/FCOS-Detection/README.md'),
    _m(name='FCOS_MS_V_39_eSE_3x', method='FCOS', toolbox='AdelaiDet', config='FCOS-Detection/vovnet/MS_V_39_3x.yaml',
       urls=('https://dl.dropbox.com/s/t51vrqiekid49vp/fcos_V_39_eSE_FPN_ms_3x.pth',),
       box_ap=43.5, source='configs/FCOS-Detection/vovnet/README.md',
       requires='VoVNet backbone'),
    _m(name='FCOS_MS_V_57_eSE_3x', method='FCOS', toolbox='AdelaiDet', config='FCOS-Detection/vovnet/MS_V_57_3x.yaml',
       urls=('https://dl.dropbox.com/s/c7mb1mq10eo4pzk/faster_V_57_eSE_ms_3x.pth',),
       box_ap=44.4, source='configs/FCOS-Detection/vovnet/README.md',
       requires='VoVNet backbone'),
    _m(name='FCOS_MS_V_99_eSE_3x', method='FCOS', toolbox='AdelaiDet', config='FCOS-Detection/vovnet/MS_V_99_3x.yaml',
       urls=('https://www.dropbox.com/s/cztd5jry52cy6vx/fcos_V_99_eSE_FPN_ms_3x.pth',),
       box_ap=45.2, source='configs/FCOS-Detection/vovnet/README.md',
       requires='VoVNet backbone'),
    _m(name='BlendMask_R_50_1x', method='BlendMask', toolbox='AdelaiDet', config='BlendMask/R_50_1x.yaml',
       urls=('https://huggingface.co/ZjuCv/AdelaiDet/resolve/main/R_50_1x.pth', 'https://huggingface.co/ZjuCv/AdelaiDet/blob/main/R_50_1x.pth'),
       dead_urls=('https://cloudstor.aarnet.edu.au/plus/s/zoxXPnr6Hw3OJgK/download',),
       box_ap=39.9, mask_ap=35.8, source='configs/BlendMask/README.md'),
    _m(name='BlendMask_R_50_3x', method='BlendMask', toolbox='AdelaiDet', config='BlendMask/R_50_3x.yaml',
       urls=('https://huggingface.co/ZjuCv/AdelaiDet/resolve/main/R_50_3x.pth', 'https://huggingface.co/ZjuCv/AdelaiDet/blob/main/R_50_3x.pth'),
       dead_urls=('https://cloudstor.aarnet.edu.au/plus/s/ZnaInHFEKst6mvg/download',),
       box_ap=42.7, mask_ap=37.8, source='configs/BlendMask/README.md'),
    _m(name='BlendMask_R_101_3x', method='BlendMask', toolbox='AdelaiDet', config='BlendMask/R_101_3x.yaml',
       urls=('https://huggingface.co/ZjuCv/AdelaiDet/resolve/main/R_101_3x.pth', 'https://huggingface.co/ZjuCv/AdelaiDet/blob/main/R_101_3x.pth'),
       dead_urls=('https://cloudstor.aarnet.edu.au/plus/s/e4fXrliAcMtyEBy/download',),
       box_ap=44.8, mask_ap=39.5, source='configs/BlendMask/README.md'),
    _m(name='BlendMask_R_101_dcni3_5x', method='BlendMask', toolbox='AdelaiDet', config='BlendMask/R_101_dcni3_5x.yaml',
       urls=('https://huggingface.co/ZjuCv/AdelaiDet/resolve/main/R_101_dcni3_5x.pth', 'https://huggingface.co/ZjuCv/AdelaiDet/blob/main/R_101_dcni3_5x.pth'),
       dead_urls=('https://cloudstor.aarnet.edu.au/plus/s/vbnKnQtaGlw8TKv/download',),
       box_ap=46.8, mask_ap=41.1, source='configs/BlendMask/README.md'),
    _m(name='BlendMask_550_R_50_3x', method='BlendMask', toolbox='AdelaiDet', config='BlendMask/550_R_50_3x.yaml',
       urls=('https://huggingface.co/ZjuCv/AdelaiDet/resolve/main/550_R_50_3x.pth', 'https://huggingface.co/ZjuCv/AdelaiDet/blob/main/550_R_50_3x.pth'),
       dead_urls=('https://cloudstor.aarnet.edu.au/plus/s/R3Qintf7N8UCiIt/download',),
       box_ap=38.7, mask_ap=34.5, source='configs/BlendMask/README.md'),
    _m(name='BlendMask_RT_R_50_4x_syncbn_shtw', method='BlendMask', toolbox='AdelaiDet', config='BlendMask/RT_R_50_4x_syncbn_shtw.yaml',
       urls=('https://huggingface.co/ZjuCv/AdelaiDet/resolve/main/RT_R_50_4x_syncbn_shtw.pth', 'https://huggingface.co/ZjuCv/AdelaiDet/blob/main/RT_R_50_4x_syncbn_shtw.pth'),
       box_ap=39.3, mask_ap=35.1, source='configs/BlendMask/README.md'),
    _m(name='BlendMask_RT_R_50_4x_bn-head_syncbn_shtw', method='BlendMask', toolbox='AdelaiDet', config='BlendMask/RT_R_50_4x_bn-head_syncbn_shtw.yaml',
       urls=('https://huggingface.co/ZjuCv/AdelaiDet/resolve/main/RT_R_50_4x_bn-head_syncbn_shtw.pth', 'https://huggingface.co/ZjuCv/AdelaiDet/blob/main/RT_R_50_4x_bn-head_syncbn_shtw.pth'),
       box_ap=39.3, mask_ap=35.1, source='configs/BlendMask/README.md'),
    _m(name='BlendMask_DLA_34_4x', method='BlendMask', toolbox='AdelaiDet', config='BlendMask/DLA_34_syncbn_4x.yaml',
       urls=('https://huggingface.co/ZjuCv/AdelaiDet/resolve/main/DLA_34_syncbn_4x.pth', 'https://huggingface.co/ZjuCv/AdelaiDet/blob/main/DLA_34_syncbn_4x.pth'),
       box_ap=40.8, mask_ap=36.3, source='configs/BlendMask/README.md'),
    _m(name='BlendMask_Panoptic_R_50_3x', method='BlendMask-Panoptic', toolbox='AdelaiDet', config='BlendMask/Panoptic/R_50_3x.yaml',
       urls=('https://huggingface.co/ZjuCv/AdelaiDet/resolve/main/R_50_3x.pth', 'https://huggingface.co/ZjuCv/AdelaiDet/blob/main/R_50_3x.pth'),
       dead_urls=('https://cloudstor.aarnet.edu.au/plus/s/oDgi0826JOJXCr5/download',),
       pq=42.5, dataset='COCO panoptic val2017', source='configs/BlendMask/README.md',
       note='HuggingFace hosts this under the same file name as the instance model of the same backbone (the older CloudStor files differed): check the keys'),
    _m(name='BlendMask_Panoptic_R_101_3x', method='BlendMask-Panoptic', toolbox='AdelaiDet', config='BlendMask/Panoptic/R_101_3x.yaml',
       urls=('https://huggingface.co/ZjuCv/AdelaiDet/resolve/main/R_101_3x.pth', 'https://huggingface.co/ZjuCv/AdelaiDet/blob/main/R_101_3x.pth'),
       dead_urls=('https://cloudstor.aarnet.edu.au/plus/s/u6gZwj06MWDEkYe/download',),
       pq=44.3, dataset='COCO panoptic val2017', source='configs/BlendMask/README.md',
       note='HuggingFace hosts this under the same file name as the instance model of the same backbone (the older CloudStor files differed): check the keys'),
    _m(name='BlendMask_Panoptic_R_101_dcni3_5x', method='BlendMask-Panoptic', toolbox='AdelaiDet', config='BlendMask/Panoptic/R_101_dcni3_5x.yaml',
       urls=('https://huggingface.co/ZjuCv/AdelaiDet/resolve/main/R_101_dcni3_5x.pth', 'https://huggingface.co/ZjuCv/AdelaiDet/blob/main/R_101_dcni3_5x.pth'),
       dead_urls=('https://cloudstor.aarnet.edu.au/plus/s/Jwp41WEzDdrhWsN/download',),
       pq=46.0, dataset='COCO panoptic val2017', source='configs/BlendMask/README.md',
       note='HuggingFace hosts this under the same file name as the instance model of the same backbone (the older CloudStor files differed): check the keys'),
    _m(name='BlendMask_Person_R_50_1x', method='BlendMask-Person', toolbox='AdelaiDet', config='BlendMask/Person/R_50_1x.yaml',
       urls=(),
       dead_urls=('https://cloudstor.aarnet.edu.au/plus/s/nvpcKTFA5fsagc0/download',),
       box_ap=70.6, mask_ap=66.7, dataset='PIC person', source='MODEL_ZOO.md',
       note='fine-tuned from BlendMask_R_50_3x; only a dead CloudStor link was published'),
    _m(name='CondInst_MS_R_50_1x', method='CondInst', toolbox='AdelaiDet', config='CondInst/MS_R_50_1x.yaml',
       urls=('https://huggingface.co/tianzhi/AdelaiDet-CondInst/resolve/main/CondInst_MS_R_50_1x.pth?download=true',),
       box_ap=39.7, mask_ap=35.7, source='configs/CondInst/README.md'),
    _m(name='CondInst_MS_R_50_3x', method='CondInst', toolbox='AdelaiDet', config='CondInst/MS_R_50_3x.yaml',
       urls=('https://huggingface.co/tianzhi/AdelaiDet-CondInst/resolve/main/CondInst_MS_R_50_3x.pth?download=true',),
       box_ap=41.9, mask_ap=37.5, source='configs/CondInst/README.md'),
    _m(name='CondInst_MS_R_101_3x', method='CondInst', toolbox='AdelaiDet', config='CondInst/MS_R_101_3x.yaml',
       urls=('https://huggingface.co/tianzhi/AdelaiDet-CondInst/resolve/main/CondInst_MS_R_101_3x.pth?download=true',),
       box_ap=43.3, mask_ap=38.6, source='configs/CondInst/README.md'),
    _m(name='CondInst_MS_R_50_3x_sem', method='CondInst', toolbox='AdelaiDet', config='CondInst/MS_R_50_3x_sem.yaml',
       urls=('https://huggingface.co/tianzhi/AdelaiDet-CondInst/resolve/main/CondInst_MS_R_50_3x_sem.pth?download=true',),
       box_ap=42.6, mask_ap=38.2, source='configs/CondInst/README.md'),
    _m(name='CondInst_MS_R_101_3x_sem', method='CondInst', toolbox='AdelaiDet', config='CondInst/MS_R_101_3x_sem.yaml',
       urls=('https://huggingface.co/tianzhi/AdelaiDet-CondInst/resolve/main/CondInst_MS_R_101_3x_sem.pth?download=true',),
       dead_urls=('https://cloudstor.aarnet.edu.au/plus/s/M8nNxSR5iNP4qyO/download',),
       box_ap=44.6, mask_ap=39.8, source='configs/CondInst/README.md'),
    _m(name='CondInst_MS_R_50_BiFPN_1x', method='CondInst', toolbox='AdelaiDet', config='CondInst/MS_R_50_BiFPN_1x.yaml',
       urls=('https://huggingface.co/tianzhi/AdelaiDet-CondInst/resolve/main/CondInst_MS_R_50_BiFPN_1x.pth?download=true',),
       box_ap=42.5, mask_ap=37.3, source='configs/CondInst/README.md',
       requires='BiFPN backbone'),
    _m(name='CondInst_MS_R_50_BiFPN_3x', method='CondInst', toolbox='AdelaiDet', config='CondInst/MS_R_50_BiFPN_3x.yaml',
       urls=('https://huggingface.co/tianzhi/AdelaiDet-CondInst/resolve/main/CondInst_MS_R_50_BiFPN_3x.pth?download=true',),
       box_ap=44.3, mask_ap=38.9, source='configs/CondInst/README.md',
       requires='BiFPN backbone'),
    _m(name='CondInst_MS_R_50_BiFPN_3x_sem', method='CondInst', toolbox='AdelaiDet', config='CondInst/MS_R_50_BiFPN_3x_sem.yaml',
       urls=('https://huggingface.co/tianzhi/AdelaiDet-CondInst/resolve/main/CondInst_MS_R_50_BiFPN_3x_sem.pth?download=true',),
       box_ap=44.7, mask_ap=39.4, source='configs/CondInst/README.md',
       requires='BiFPN backbone'),
    _m(name='CondInst_MS_R_101_BiFPN_3x', method='CondInst', toolbox='AdelaiDet', config='CondInst/MS_R_101_BiFPN_3x.yaml',
       urls=('https://huggingface.co/tianzhi/AdelaiDet-CondInst/resolve/main/CondInst_MS_R_101_BiFPN_3x.pth?download=true',),
       box_ap=45.3, mask_ap=39.6, source='configs/CondInst/README.md',
       requires='BiFPN backbone'),
    _m(name='CondInst_MS_R_101_BiFPN_3x_sem', method='CondInst', toolbox='AdelaiDet', config='CondInst/MS_R_101_BiFPN_3x_sem.yaml',
       urls=('https://huggingface.co/tianzhi/AdelaiDet-CondInst/resolve/main/CondInst_R_101_BiFPN_3x_sem.pth?download=true',),
       box_ap=45.7, mask_ap=40.2, source='configs/CondInst/README.md',
       requires='BiFPN backbone'),
    _m(name='BoxInst_MS_R_50_1x', method='BoxInst', toolbox='AdelaiDet', config='BoxInst/MS_R_50_1x.yaml',
       urls=('https://huggingface.co/tianzhi/AdelaiDet-BoxInst/resolve/main/BoxInst_MS_R_50_1x.pth?download=true',),
       box_ap=39.4, mask_ap=30.7, source='configs/BoxInst/README.md'),
    _m(name='BoxInst_MS_R_50_3x', method='BoxInst', toolbox='AdelaiDet', config='BoxInst/MS_R_50_3x.yaml',
       urls=('https://huggingface.co/tianzhi/AdelaiDet-BoxInst/resolve/main/BoxInst_MS_R_50_3x.pth?download=true',),
       box_ap=41.5, mask_ap=31.8, source='configs/BoxInst/README.md'),
    _m(name='BoxInst_MS_R_101_1x', method='BoxInst', toolbox='AdelaiDet', config='BoxInst/MS_R_101_1x.yaml',
       urls=('https://huggingface.co/tianzhi/AdelaiDet-BoxInst/resolve/main/BoxInst_MS_R_101_1x.pth?download=true',),
       box_ap=41.4, mask_ap=32.2, source='configs/BoxInst/README.md'),
    _m(name='BoxInst_MS_R_101_3x', method='BoxInst', toolbox='AdelaiDet', config='BoxInst/MS_R_101_3x.yaml',
       urls=('https://huggingface.co/tianzhi/AdelaiDet-BoxInst/resolve/main/BoxInst_MS_R_101_3x.pth?download=true',),
       box_ap=43.3, mask_ap=33.0, source='configs/BoxInst/README.md'),
    _m(name='BoxInst_MS_R_101_BiFPN_3x', method='BoxInst', toolbox='AdelaiDet', config='BoxInst/MS_R_101_BiFPN_3x.yaml',
       urls=('https://huggingface.co/tianzhi/AdelaiDet-BoxInst/resolve/main/BoxInst_MS_R_101_BiFPN_3x.pth?download=true',),
       box_ap=45.4, mask_ap=34.1, source='configs/BoxInst/README.md',
       requires='BiFPN backbone'),
    _m(name='BoxInst_MS_R_101_BiFPN_dcni3_3x', method='BoxInst', toolbox='AdelaiDet', config='BoxInst/MS_R_101_BiFPN_dcni3_3x.yaml',
       urls=('https://huggingface.co/tianzhi/AdelaiDet-BoxInst/resolve/main/BoxInst_MS_R_101_BiFPN_dcni3_3x.pth?download=true',),
       box_ap=46.4, mask_ap=34.8, source='configs/BoxInst/README.md',
       requires='BiFPN backbone'),
    _m(name='SOLOv2_R50_3x', method='SOLOv2', toolbox='AdelaiDet', config='SOLOv2/R50_3x.yaml',
       urls=('https://huggingface.co/ZjuCv/AdelaiDet/resolve/main/SOLOv2_R50_3x.pth', 'https://huggingface.co/ZjuCv/AdelaiDet/blob/main/SOLOv2_R50_3x.pth'),
       dead_urls=('https://cloudstor.aarnet.edu.au/plus/s/chF3VKQT4RDoEqC/download',),
       mask_ap=37.6, source='configs/SOLOv2/README.md'),
    _m(name='SOLOv2_R101_3x', method='SOLOv2', toolbox='AdelaiDet', config='SOLOv2/R101_3x.yaml',
       urls=('https://huggingface.co/ZjuCv/AdelaiDet/resolve/main/SOLOv2_R101_3x.pth', 'https://huggingface.co/ZjuCv/AdelaiDet/blob/main/SOLOv2_R101_3x.pth'),
       mask_ap=39.0, source='configs/SOLOv2/README.md'),
    _m(name='SparseInst_R50_IAM', method='SparseInst', toolbox='SparseInst', config='SparseInst/sparse_inst_r50_base.yaml',
       urls=('https://drive.google.com/file/d/12RQLHD5EZKIOvlqW3avUCeYjFG1NPKDy/view?usp=sharing', 'https://pan.baidu.com/s/1tot7Wcoi4J1xh8ZS7VikZg'),
       mask_ap=32.8, source='README.md',
       note='Google Drive share page: download it in a browser or with gdown; the Baidu Pan link is a folder of all SparseInst models (password lkdo)'),
    _m(name='SparseInst_R50vd_IAM', method='SparseInst', toolbox='SparseInst', config='SparseInst/sparse_inst_r50vd_base.yaml',
       urls=('https://drive.google.com/file/d/1fjPFy35X2iJu3tYwVdAq4Bel82PfH5kx/view?usp=sharing', 'https://pan.baidu.com/s/1tot7Wcoi4J1xh8ZS7VikZg'),
       mask_ap=34.1, source='README.md',
       requires='ResNet-vd backbone',
       note='Google Drive share page: download it in a browser or with gdown; the Baidu Pan link is a folder of all SparseInst models (password lkdo)'),
    _m(name='SparseInst_R50_GIAM', method='SparseInst', toolbox='SparseInst', config='SparseInst/sparse_inst_r50_giam.yaml',
       urls=('https://drive.google.com/file/d/1pXU7Dsa1L7nUiLU9ULG2F6Pl5m5NEguL/view?usp=sharing', 'https://pan.baidu.com/s/1tot7Wcoi4J1xh8ZS7VikZg'),
       mask_ap=33.4, source='README.md',
       note='Google Drive share page: download it in a browser or with gdown; the Baidu Pan link is a folder of all SparseInst models (password lkdo)'),
    _m(name='SparseInst_R50_GIAM_softmax', method='SparseInst', toolbox='SparseInst', config='SparseInst/sparse_inst_r50_giam_soft.yaml',
       urls=('https://drive.google.com/file/d/1doterrG89SjmLxDyU8IhLYRGxVH69sR2/view?usp=sharing', 'https://pan.baidu.com/s/1tot7Wcoi4J1xh8ZS7VikZg'),
       mask_ap=33.6, source='README.md',
       note='Google Drive share page: download it in a browser or with gdown; the Baidu Pan link is a folder of all SparseInst models (password lkdo)'),
    _m(name='SparseInst_R50_GIAM_aug', method='SparseInst', toolbox='SparseInst', config='SparseInst/sparse_inst_r50_giam_aug.yaml',
       urls=('https://drive.google.com/file/d/1MK8rO3qtA7vN9KVSBdp0VvZHCNq8-bvz/view?usp=sharing', 'https://pan.baidu.com/s/1tot7Wcoi4J1xh8ZS7VikZg'),
       mask_ap=34.2, source='README.md',
       note='Google Drive share page: download it in a browser or with gdown; the Baidu Pan link is a folder of all SparseInst models (password lkdo)'),
    _m(name='SparseInst_R50_DCN_GIAM_aug', method='SparseInst', toolbox='SparseInst', config='SparseInst/sparse_inst_r50_dcn_giam_aug.yaml',
       urls=('https://drive.google.com/file/d/1qxdLRRHbIWEwRYn-NPPeCCk6fhBjc946/view?usp=sharing', 'https://pan.baidu.com/s/1tot7Wcoi4J1xh8ZS7VikZg'),
       mask_ap=36.4, source='README.md',
       note='Google Drive share page: download it in a browser or with gdown; the Baidu Pan link is a folder of all SparseInst models (password lkdo)'),
    _m(name='SparseInst_R50vd_GIAM_aug', method='SparseInst', toolbox='SparseInst', config='SparseInst/sparse_inst_r50vd_giam_aug.yaml',
       urls=('https://drive.google.com/file/d/1dlamg7ych_BdWpPUCuiBXbwE0SXpsfGx/view?usp=sharing', 'https://pan.baidu.com/s/1tot7Wcoi4J1xh8ZS7VikZg'),
       mask_ap=35.6, source='README.md',
       requires='ResNet-vd backbone',
       note='Google Drive share page: download it in a browser or with gdown; the Baidu Pan link is a folder of all SparseInst models (password lkdo)'),
    _m(name='SparseInst_R50vd_DCN_GIAM_aug', method='SparseInst', toolbox='SparseInst', config='SparseInst/sparse_inst_r50vd_dcn_giam_aug.yaml',
       urls=('https://drive.google.com/file/d/1clYPdCNrDNZLbmlAEJ7wjsrOLn1igOpT/view?usp=sharing', 'https://pan.baidu.com/s/1tot7Wcoi4J1xh8ZS7VikZg'),
       mask_ap=37.4, source='README.md',
       requires='ResNet-vd backbone',
       note='tested with INPUT.MIN_SIZE_TEST 608; Google Drive share page: download it in a browser or with gdown; the Baidu Pan link is a folder of all SparseInst models (password lkdo)'),
    _m(name='SparseInst_R50vd_DCN_GIAM_aug_640', method='SparseInst', toolbox='SparseInst', config='SparseInst/sparse_inst_r50vd_dcn_giam_aug.yaml',
       urls=('https://drive.google.com/file/d/1clYPdCNrDNZLbmlAEJ7wjsrOLn1igOpT/view?usp=sharing', 'https://pan.baidu.com/s/1tot7Wcoi4J1xh8ZS7VikZg'),
       mask_ap=37.7, source='README.md',
       requires='ResNet-vd backbone',
       note='same checkpoint as SparseInst_R50vd_DCN_GIAM_aug, tested with INPUT.MIN_SIZE_TEST 640; Google Drive share page: download it in a browser or with gdown; the Baidu Pan link is a folder of all SparseInst models (password lkdo)'),
    _m(name='SparseInst_CSPDarkNet53_GIAM', method='SparseInst', toolbox='SparseInst', config='SparseInst/sparse_inst_cspdarknet53_giam.yaml',
       urls=('https://drive.google.com/file/d/1rcUJWUbusM216Zbtmo_xB774jdjb3qSt/view?usp=sharing', 'https://pan.baidu.com/s/1tot7Wcoi4J1xh8ZS7VikZg'),
       mask_ap=35.1, source='README.md',
       requires='CSPDarkNet-53 backbone',
       note='Google Drive share page: download it in a browser or with gdown; the Baidu Pan link is a folder of all SparseInst models (password lkdo)'),
    _m(name='SparseInst_R101_GIAM', method='SparseInst', toolbox='SparseInst', config='SparseInst/sparse_inst_r101_giam.yaml',
       urls=('https://drive.google.com/file/d/1EZZck-UNfom652iyDhdaGYbxS0MrO__z/view?usp=sharing', 'https://pan.baidu.com/s/1tot7Wcoi4J1xh8ZS7VikZg'),
       mask_ap=34.9, source='README.md',
       note='Google Drive share page: download it in a browser or with gdown; the Baidu Pan link is a folder of all SparseInst models (password lkdo)'),
    _m(name='SparseInst_R101_DCN_GIAM', method='SparseInst', toolbox='SparseInst', config='SparseInst/sparse_inst_r101_dcn_giam.yaml',
       urls=('https://drive.google.com/file/d/1shkFvyBmDlWRxl1ActD6VfZJTJYBGBjv/view?usp=sharing', 'https://pan.baidu.com/s/1tot7Wcoi4J1xh8ZS7VikZg'),
       mask_ap=36.4, source='README.md',
       note='Google Drive share page: download it in a browser or with gdown; the Baidu Pan link is a folder of all SparseInst models (password lkdo)'),
    _m(name='SparseInst_PVTv2_B1_GIAM', method='SparseInst', toolbox='SparseInst', config='SparseInst/sparse_inst_pvt_b1_giam.yaml',
       urls=('https://drive.google.com/file/d/13l9JgTz3sF6j3vSVHOOhAYJnCf-QuNe_/view?usp=sharing', 'https://pan.baidu.com/s/1tot7Wcoi4J1xh8ZS7VikZg'),
       mask_ap=35.3, source='README.md',
       requires='PVTv2 backbone',
       note='Google Drive share page: download it in a browser or with gdown; the Baidu Pan link is a folder of all SparseInst models (password lkdo)'),
    _m(name='SparseInst_PVTv2_B2_li_GIAM', method='SparseInst', toolbox='SparseInst', config='SparseInst/sparse_inst_pvt_b2_li_giam.yaml',
       urls=('https://drive.google.com/file/d/1DFxQnFg_UL6kmMoNC4StUKo79RXVHyNF/view?usp=sharing', 'https://pan.baidu.com/s/1tot7Wcoi4J1xh8ZS7VikZg'),
       mask_ap=37.2, source='README.md',
       requires='PVTv2 backbone',
       note='Google Drive share page: download it in a browser or with gdown; the Baidu Pan link is a folder of all SparseInst models (password lkdo)'),
)

CATALOG: Dict[str, ModelInfo] = {m.name: m for m in _MODELS}
assert len(CATALOG) == len(_MODELS), "duplicate model names"
