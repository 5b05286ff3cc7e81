"""Datasets and loaders: ``build_loaders(cfg, seed=...)`` once, ``set_epoch(train_loader, epoch)`` every epoch."""

from .checks import check_data_config
from .config import DataConfig
from .info import DataInfo
from .loaders import build_loaders, set_epoch

__all__ = ["DataConfig", "DataInfo", "build_loaders", "check_data_config", "set_epoch"]
