"""Perception probe datasets: loaders of the native on-disk layouts, all returning one schema.

See :mod:`vkvtrain.data.perception.schema` for the schema and :mod:`vkvtrain.data.synthetic_perception`
for generators with exact ground truth. ``LOADERS`` maps a dataset name to its loader class.
"""

from vkvtrain.data.perception.davis import DAVIS
from vkvtrain.data.perception.imagenet_s import ImageNetS
from vkvtrain.data.perception.msrc import MSRCCoseg
from vkvtrain.data.perception.pascal5i import Pascal5i
from vkvtrain.data.perception.refcoco import RefCOCO
from vkvtrain.data.perception.schema import (
                                             CosegGroup,
                                             FewShotEpisode,
                                             KeypointPair,
                                             PerceptionDataset,
                                             SegSample,
                                             VideoClip,
)
from vkvtrain.data.perception.spair import SPair71k

LOADERS = {
    "pascal5i": Pascal5i,
    "msrc": MSRCCoseg,
    "imagenet_s": ImageNetS,
    "refcoco": RefCOCO,
    "spair71k": SPair71k,
    "davis": DAVIS,
}

__all__ = ["DAVIS", "LOADERS", "CosegGroup", "FewShotEpisode", "ImageNetS", "KeypointPair", "MSRCCoseg",
           "Pascal5i", "PerceptionDataset", "RefCOCO", "SPair71k", "SegSample", "VideoClip"]
