"""Train or evaluate a classifier with or without GMConv.

    python train.py                                  # CIFAR ResNet-20 + GMConv on the bundled digits
    python train.py model=resnet50 conv=gmconv data=cifar10 data.root=/datasets
    python train.py -m conv=standard,gmconv seed=0,1,2
    python train.py resume=outputs/digits/resnet20-gmconv/<run>   # continue that run in its folder

Config: configs/train.yaml (groups under configs/); the run itself: engine/runner.py.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from engine.config import register_configs
from engine.distributed import agree_on_run_time, init_distributed, quiet_non_main_logging
from engine.runner import run

log = logging.getLogger("train")
register_configs()


def resume_overrides(argv: list[str]) -> list[str]:
    """``resume=<run folder>`` continues that run in its own folder with its own config.

    Hydra picks the run folder before the task starts, so the folder and the original
    overrides are added to the command line here; overrides typed now still win.
    """
    resume = next((a.split("=", 1)[1] for a in argv if a.startswith("resume=")), None)
    if not resume or resume == "auto" or any(a.startswith("hydra.run.dir=") for a in argv):
        return argv
    path = Path(resume)
    run_dir = path if path.is_dir() else path.parent.parent  # <run>/checkpoints/last.pt
    saved = run_dir / ".hydra" / "overrides.yaml"
    if not saved.is_file():
        return argv  # a bare checkpoint file: continue it with this command line's config, in a new folder
    previous = [o for o in OmegaConf.load(saved) if not o.startswith(("resume=", "hydra."))]
    return [argv[0], *previous, *argv[1:], f"hydra.run.dir={run_dir}"]


@hydra.main(config_path="configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    quiet_non_main_logging(init_distributed())
    try:
        results = run(cfg, run_dir)
    except (ValueError, FileNotFoundError) as err:
        log.debug("details", exc_info=True)
        log.error("error: %s", err)
        sys.exit(2)
    return results.get("top1")  # for Hydra sweepers that optimise a metric; None when preempted


if __name__ == "__main__":
    sys.argv = resume_overrides(sys.argv)
    dist_info = init_distributed()  # under torchrun; a no-op otherwise
    start = agree_on_run_time(dist_info)
    OmegaConf.register_new_resolver("run_time", start.strftime)
    if not dist_info.is_main:
        sys.argv.append("hydra.output_subdir=null")  # rank 0 alone writes .hydra/
    main()
