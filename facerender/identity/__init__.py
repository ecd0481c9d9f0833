"""dlib's face-recognition ResNet in PyTorch: a differentiable 128-d face identity network, face chips and losses.

The weights come from ``dlib_face_recognition_resnet_model_v1.dat`` of the ``face-recognition-models`` package
(public domain, by dlib's author); nothing is downloaded and dlib itself is not needed to run the network.

    >>> from facerender.identity import DlibFaceNet, face_chips, IdentityLoss
    >>> net = DlibFaceNet.from_dlib()                       # weights from face-recognition-models
    >>> chips = face_chips(images, landmarks)               # (B, H, W, 3) in [0, 1], (B, 68, 2) -> (B, 3, 150, 150)
    >>> desc = net(chips)                                   # (B, 128); same person below 0.6 distance
    >>> loss = IdentityLoss(net)(pred, target, landmarks)   # 1 - cos, differentiable w.r.t. pred's pixels

See docs/identity.md. Importing this package does not import dlib.
"""
from __future__ import annotations

from morphable_models._lazy import attach as _attach

_EXPORTS = {
    "DlibFaceNet": "network",
    "CHIP_SIZE": "network",
    "DESCRIPTOR_DIM": "network",
    "FEATURE_NAMES": "network",
    "default_model_path": "network",
    "check_face_resnet": "network",
    "face_chips": "chips",
    "face_chip_details": "chips",
    "ChipDetails": "chips",
    "FaceTooSmallError": "chips",
    "ALIGN_POINTS_68": "chips",
    "IdentityLoss": "losses",
    "IdentityFeatureLoss": "losses",
    "face_descriptors": "losses",
    "cosine_similarity": "losses",
    "read_dlib_dnn": "dlib_format",
    "parse_dlib_dnn": "dlib_format",
    "DlibDNN": "dlib_format",
    "DlibLayer": "dlib_format",
    "DlibFormatError": "dlib_format",
    "DlibNetworkMismatchError": "dlib_format",
}

#: dlib's same-person threshold on the Euclidean distance of two descriptors.
SAME_PERSON_THRESHOLD = 0.6


__getattr__, __dir__, __all__ = _attach(__name__, {k: "." + v for k, v in _EXPORTS.items()},
                                        extra=("SAME_PERSON_THRESHOLD",))
