"""Datasets and loaders: ``build_loaders(data, seed=...)`` once, ``set_epoch(train_loader, epoch)`` every epoch."""

from omegaconf import OmegaConf

from .bad_images import ReplacedImages
from .config import DataConfig
from .config_checks import check_data_config
from .info import DataInfo
from .loaders import available_cores, build_loaders, build_val_loader, set_epoch

# configs/data/*.yaml: ``num_workers: ${cores_at_most:8}``, the recipe's worker count on a machine with that many
# cores, and the machine's core count below it; a count typed on the command line is kept as typed (and warned
# about when it exceeds the cores)
if not OmegaConf.has_resolver("cores_at_most"):
    OmegaConf.register_new_resolver("cores_at_most", lambda most: min(int(most), available_cores()))

__all__ = [
    "DataConfig",
    "DataInfo",
    "ReplacedImages",
    "build_loaders",
    "build_val_loader",
    "check_data_config",
    "set_epoch",
]
