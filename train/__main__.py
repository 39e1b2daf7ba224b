"""``python -m train [overrides]``: train and evaluate one configuration (Hydra command line)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

import conf
from train.config import error_line, register_configs
from train.run_dir import OutputDirError, check_run_dir, check_writable, resume_overrides

CONFIG_DIR = str(Path(conf.__file__).parent)
EXPECTED_ERRORS = (ValueError, OSError, RuntimeError, FloatingPointError)  # the last: a non-finite loss

log = logging.getLogger("train")


def prepare_argv(args: list[str]) -> list[str]:
    """Expand ``resume=<run dir>`` into that run's overrides and check the output folder early.

    Hydra creates the run directory before the program starts (with a traceback on failure), so
    writability is checked here first.
    """
    resume = next((a.split("=", 1)[1] for a in args if a.startswith("resume=")), None)
    if resume:
        args = resume_overrides(Path(resume), [a for a in args if not a.startswith("resume=")])
    if "-m" not in args and "--multirun" not in args:
        chosen = [a.split("=", 1)[1] for a in args if a.startswith(("hydra.run.dir=", "paths.output_dir="))]
        check_writable(Path(chosen[-1].split("${")[0] or ".") if chosen else Path("outputs"))
    return args


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def hydra_main(cfg: DictConfig) -> float | None:
    from train.program import run

    try:
        results = run(cfg)
    except EXPECTED_ERRORS as err:
        log.error("%s: %s", type(err).__name__, err)
        print(f"error: {error_line(err)}", file=sys.stderr)
        sys.exit(2)
    return results.get("val/imagenet/top1")


def check_single_run(args: list[str]) -> None:
    """Compose the config of a single run as Hydra will, so that an unknown key, a wrong type or an unknown
    option fails here, as one line, instead of as Hydra's multi-line report; then check its run folder
    (:func:`train.run_dir.check_run_dir`) before Hydra writes into it."""
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        cfg = compose("config", overrides=args, return_hydra_config=True)
    from train.cluster import is_rank_zero, on_slurm  # imports lightning: only when needed

    if not is_rank_zero():  # the other DDP ranks join rank 0's run, in its folder
        return
    run_dir = Path(cfg.hydra.run.dir)
    with open_dict(cfg):
        del cfg["hydra"]
    check_run_dir(run_dir, cfg, resuming=OmegaConf.select(cfg, "resume") is not None, slurm=on_slurm())


def main() -> None:
    register_configs()
    try:
        args = prepare_argv(sys.argv[1:])
        hydra_flags = any(a.startswith("-") for a in args)  # -m, --cfg, --help, ...: left to Hydra
        if not hydra_flags:
            check_single_run(args)
    except (OutputDirError, FileNotFoundError, HydraException, OmegaConfBaseException) as err:
        print(f"error: {error_line(err)}", file=sys.stderr)
        sys.exit(2)
    sys.argv = [sys.argv[0], *args]
    hydra_main()


if __name__ == "__main__":
    main()
