"""Datasets and loaders: ``build_loaders(data, seed=...)`` once, ``set_epoch(train_loader, epoch)`` every epoch."""

from .bad_images import ReplacedImages
from .config_checks import check_data_config
from .config import DataConfig
from .info import DataInfo
from .loaders import build_loaders, build_val_loader, set_epoch

__all__ = ["DataConfig", "DataInfo", "ReplacedImages", "build_loaders", "build_val_loader", "check_data_config",
           "set_epoch"]
