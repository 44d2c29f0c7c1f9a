"""lightning_seg.losses"""

from .set_criterion import SetCriterion  # noqa: F401
from .class_weights import class_weights_from_counts, compute_class_weights, count_class_pixels, load_class_weights  # noqa: F401
from .combined import AuxiliaryHeadLoss, CombinedLoss  # noqa: F401
from .cross_entropy import CrossEntropyLoss  # noqa: F401
from .dice import DiceLoss  # noqa: F401
from .focal import FocalLoss  # noqa: F401
from .lovasz import LovaszSoftmaxLoss, lovasz_softmax  # noqa: F401
from .ohem import OhemCrossEntropyLoss, ohem_keep_mask  # noqa: F401
