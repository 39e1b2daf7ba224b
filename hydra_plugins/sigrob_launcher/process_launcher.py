"""``hydra/launcher=process``: run each multirun job as ``python -m <module> <job overrides>
hydra.run.dir=<job dir>`` in a fresh process, one after the other.

Why not in-process (Hydra's basic launcher): Lightning's DDP starts the other ranks by re-running
the command line, which for a multirun contains ``-m`` and the whole sweep; here every job is a
plain single run, so its ranks re-run that job only. A fresh process per job also leaves no state
behind (W&B environment variables, CUDA memory, process groups) for the next job.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from hydra.core.utils import JobReturn, JobStatus, filter_overrides, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)


class ProcessLauncher(Launcher):
    """Runs the jobs of a sweep sequentially, each in its own process.

    Args:
        module: the program, run as ``python -m <module>``.
        group_key: an override key that receives the sweep folder's name unless the job sets it
            (the W&B group of the sweep); empty: none.
    """

    def __init__(self, module: str, group_key: str = "") -> None:
        self.module = module
        self.group_key = group_key
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context

    def job_command(self, overrides: Sequence[str], job_dir: Path, sweep_name: str) -> list[str]:
        """The command line of one job."""
        args = list(overrides)
        if self.group_key and not any(a.split("=", 1)[0].lstrip("+~") == self.group_key for a in args):
            args.append(f"{self.group_key}={sweep_name}")
        return [sys.executable, "-m", self.module, *args, f"hydra.run.dir={job_dir}"]

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None and self.hydra_context is not None
        setup_globals()
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info("Launching %d jobs, one process each, in %s", len(job_overrides), sweep_dir)
        returns = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            job_cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(job_cfg):
                job_cfg.hydra.job.id = idx
                job_cfg.hydra.job.num = idx
            job_dir = sweep_dir / str(job_cfg.hydra.sweep.subdir)
            command = self.job_command(overrides, job_dir, sweep_dir.name)
            log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
            code = subprocess.run(command, check=False).returncode
            failed = RuntimeError(f"job #{idx} exited with status {code}: {' '.join(command)}")
            returns.append(
                JobReturn(
                    overrides=list(overrides),
                    cfg=job_cfg,
                    hydra_cfg=job_cfg,
                    working_dir=str(job_dir),
                    task_name=str(job_cfg.hydra.job.name),
                    status=JobStatus.COMPLETED if code == 0 else JobStatus.FAILED,
                    _return_value=code if code == 0 else failed,
                )
            )
        return returns
