"""Deep Video Portraits (``docs/deep_video_portraits.md``): :class:`DeepVideoPortraits` (the method for the shared
trainer) and its :class:`DVPConfig`; training on a target video (:func:`train_dvp`, :func:`load_dvp`) and
reenactment (:func:`dvp_reenact`).
"""
from .method import DVP_MAPS, DeepVideoPortraits, DVPConfig
from .reenact import DVPReenactConfig, DVPReenactResult, dvp_reenact, transfer_pose
from .train import load_dvp, read_run_config, train_dvp

__all__ = ["DeepVideoPortraits", "DVPConfig", "DVP_MAPS", "train_dvp", "load_dvp", "read_run_config", "dvp_reenact",
           "DVPReenactConfig", "DVPReenactResult", "transfer_pose"]
