"""Where compared runs come from: run directories, offline W&B runs, or a W&B group online.

- A run directory of ``python -m train``: ``metrics.json`` (else the last evaluation in
  ``history.csv``), ``config.yaml`` (head, augment, seed), ``logits/`` for the bootstrap, and the
  W&B group of its offline run (``wandb/offline-run-*``) when there is one. A folder holding run
  directories (a Hydra sweep folder) stands for all of them.
- An offline W&B run folder (``offline-run-*``) or a ``wandb`` folder holding them, read without a
  server by ``wandb leet inspect``; the folders of a resumed run (one id) are merged, later wins,
  also when they are named separately (``wandb/offline-run-*``).
- ``wandb://entity/project/group``: every run of that group, via ``wandb.Api`` (needs the network
  and an API key; not exercised by the tests, which have neither).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import OmegaConf

from train.run_dir import flatten, free_on_resume

WANDB_URL = "wandb://"
EVAL_JOB = "eval"  # the W&B job type of `python -m evaluation` runs, which are not compared

log = logging.getLogger(__name__)
SETTING_GROUPS = ("model", "data", "optim", "mixup", "augment", "head")
TRAINER_SETTINGS = (
    "trainer.max_epochs", "trainer.max_steps", "trainer.limit_train_batches", "trainer.accumulate_grad_batches",
)  # fmt: skip


class SourceError(ValueError):
    """A compare source cannot be read (the message names it and the fix)."""


class NotTrainingRun(SourceError):
    """A folder without a finished training run (a crashed job, a ``python -m evaluation`` output)."""


@dataclass
class Run:
    """One compared run.

    Attributes:
        name: row label (the run directory's or the W&B run's name, qualified when repeated).
        experiment, head, augment, model, seed: what it trained (runs are paired on these).
        metrics: final scores ``{"val/<variant>/<metric>": value}`` of the final weights.
        group: its W&B group, when known.
        run_dir: where its ``logits/<variant>.npz`` files are, when it has them.
        run_id: its W&B run id, when it was read from W&B.
        settings: the rest of what decided what it trained (:func:`training_settings`); runs compared as
            seeds of one experiment must agree on it.
    """

    name: str
    experiment: str
    head: str
    augment: str
    model: str
    seed: int
    metrics: dict[str, float]
    group: str | None = None
    run_dir: Path | None = None
    run_id: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def logits_file(self, variant: str) -> Path | None:
        """``<run dir>/logits/<variant>.npz`` if this run saved it."""
        if self.run_dir is None:
            return None
        path = self.run_dir / "logits" / f"{variant}.npz"
        return path if path.is_file() else None


def final_scores(values: dict[str, Any]) -> dict[str, float]:
    """The ``val/...`` numbers of a metrics dict or W&B summary; a W&B ``{"last": v, ...}`` gives v."""
    scores = {}
    for key, value in values.items():
        if isinstance(value, dict):
            value = value.get("last")
        if key.startswith("val/") and isinstance(value, int | float) and not isinstance(value, bool):
            scores[key] = float(value)
    return scores


def history_scores(path: Path) -> dict[str, float]:
    """Scores of the last evaluation in ``history.csv`` (the ``final`` phase when it ran)."""
    frame = pd.read_csv(path)
    last = (
        frame[frame.phase == "final"]
        if (frame.phase == "final").any()
        else frame[frame.epoch == frame.epoch.max()]
    )
    scores = {}
    for _, row in last.iterrows():
        for metric, value in row.drop(["epoch", "step", "phase", "variant"]).items():
            if isinstance(value, int | float) and math.isfinite(value):
                scores[f"val/{row.variant}/{metric}"] = float(value)
    return scores


def wandb_executable() -> str:
    """The ``wandb`` command of this environment."""
    beside = Path(sys.executable).parent / "wandb"
    found = str(beside) if beside.is_file() else shutil.which("wandb")
    if found is None:
        raise SourceError("the `wandb` command is not installed; pip install wandb to read offline W&B runs")
    return found


def leet(folder: Path, *flags: str) -> str:
    """Output of ``wandb leet inspect <flags> --json <folder>`` (reads the run's file, no server)."""
    proc = subprocess.run(
        [wandb_executable(), "leet", "inspect", *flags, "--json", str(folder)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0:
        raise SourceError(f"{folder}: `wandb leet inspect` failed: {proc.stderr.strip().splitlines()[-1:]}")
    return proc.stdout


def offline_record(folders: list[Path]) -> dict[str, Any]:
    """One offline W&B run from its folders (a resumed run has several): summary, config, tags and
    the ``run`` record's group and job type, merged in folder (= start time) order, later wins."""
    merged: dict[str, Any] = {"summary": {}, "config": {}, "tags": [], "group": None, "name": ""}
    for folder in sorted(folders):
        summary = json.loads(leet(folder, "--summary"))
        merged["summary"].update(summary.get("summary") or {})
        merged["config"].update(summary.get("config") or {})
        merged["tags"] = summary.get("tags") or merged["tags"]
        merged["name"] = summary.get("name") or merged["name"]
        merged["run_id"] = summary.get("run_id")
        for line in leet(folder).splitlines():
            record = json.loads(line)
            if record.get("type") == "run":
                merged["group"] = record["run"].get("run_group") or merged["group"]
                merged["job_type"] = record["run"].get("job_type")
                break
    return merged


def offline_folders(path: Path) -> dict[str, list[Path]]:
    """``offline-run-<time>-<id>`` folders in or at ``path``, by run id."""
    folders = [path] if path.name.startswith("offline-run-") else sorted(path.glob("offline-run-*"))
    by_id: dict[str, list[Path]] = {}
    for folder in folders:
        by_id.setdefault(folder.name.rsplit("-", 1)[-1], []).append(folder)
    return by_id


def run_from_wandb(record: dict[str, Any], run_id: str) -> Run:
    """A :class:`Run` from a W&B run's flat config and summary (online or offline); ``run_id`` is
    also its name when the record has none."""
    config = record["config"]
    missing = [k for k in ("experiment", "head", "augment", "model.name", "seed") if k not in config]
    if missing:
        raise SourceError(
            f"W&B run {run_id}: config has no {', '.join(missing)}; it was not logged by `python -m train`"
        )
    return Run(
        name=record.get("name") or run_id,
        experiment=str(config["experiment"]),
        head=str(config["head"]),
        augment=str(config["augment"]),
        model=str(config["model.name"]),
        seed=int(config["seed"]),
        metrics=final_scores(record["summary"]),
        group=record.get("group"),
        run_id=run_id,
        settings=training_settings(config),
    )


def run_from_dir(run_dir: Path) -> Run:
    """A :class:`Run` from a ``python -m train`` run directory (see the module docstring); raises
    :class:`NotTrainingRun` for an unfinished run or a ``python -m evaluation`` output folder."""
    config_file = run_dir / "config.yaml"
    if (run_dir / "metrics.json").is_file():
        metrics = final_scores(json.loads((run_dir / "metrics.json").read_text()))
    elif (run_dir / "history.csv").is_file():
        metrics = history_scores(run_dir / "history.csv")
    else:
        metrics = {}
    if not config_file.is_file() or not metrics:
        raise NotTrainingRun(
            f"{run_dir} is not a finished `python -m train` run directory (needs config.yaml and "
            "metrics.json or history.csv)"
        )
    from train.program import augment_name  # here: train.program imports this package

    cfg = OmegaConf.load(config_file)
    if "checkpoint" in cfg:  # a field of evaluation's config only
        raise NotTrainingRun(f"{run_dir} is a `python -m evaluation` output folder, not a training run")
    group = None
    for folders in offline_folders(run_dir / "wandb").values():
        group = offline_record(folders)["group"]
    return Run(
        name=run_dir.name,
        experiment=str(cfg.experiment),
        head=str(cfg.head.name),
        augment=augment_name(cfg),
        model=str(cfg.model.name),
        seed=int(cfg.seed),
        metrics=metrics,
        group=group,
        run_dir=run_dir,
        settings=training_settings(flatten(OmegaConf.to_container(cfg, resolve=True))),
    )


def skip_evaluations(source: str, count: int) -> None:
    """Say how many ``python -m evaluation`` runs (W&B job type ``eval``) of ``source`` were left out."""
    if count:
        log.warning(
            "%s: %d evaluation run(s) (job_type=%s) left out; only training runs are compared",
            source,
            count,
            EVAL_JOB,
        )


def wandb_group(url: str) -> list[Run]:
    """Every run of ``wandb://entity/project/group`` via the W&B public API (online only)."""
    parts = url[len(WANDB_URL) :].strip("/").split("/")
    if len(parts) != 3 or not all(parts):
        raise SourceError(f"{url}: give wandb://<entity>/<project>/<group>")
    import wandb

    entity, project, group = parts
    found = list(wandb.Api().runs(f"{entity}/{project}", filters={"group": group}))
    runs = [
        run_from_wandb(
            {"config": dict(r.config), "summary": dict(r.summary), "group": r.group, "name": r.name}, r.id
        )
        for r in found
        if r.job_type != EVAL_JOB
    ]
    skip_evaluations(url, len(found) - len(runs))
    if not runs:
        raise SourceError(f"{url}: no runs in that group; check the entity, project and group names")
    return runs


def unique_names(runs: list[Run]) -> None:
    """Qualify repeated run names: a run directory's by its parent folder, a W&B run's (named after
    its experiment, so repeated over seeds) by its run id."""
    names = [r.name for r in runs]
    for run in runs:
        if names.count(run.name) > 1:
            run.name = f"{run.run_dir.parent.name}/{run.name}" if run.run_dir else f"{run.name}-{run.run_id}"


def training_settings(flat_config: dict[str, Any]) -> dict[str, Any]:
    """The keys of a flat run config that decide what was trained (model, data, optim, mixup, augment,
    head and the trainer's length), but the seeds (the training seed is also copied into
    the augmentation's) and what may differ between two runs of the same training (``free_on_resume``)."""
    return {
        key: value
        for key, value in flat_config.items()
        if (("." in key and key.split(".")[0] in SETTING_GROUPS) or key in TRAINER_SETTINGS)
        and not free_on_resume(key)
        and not (key.startswith("augment.") and key.endswith("seed"))
    }


def split_mixed_experiments(runs: list[Run]) -> None:
    """An experiment name shared by runs that trained differently (``head=softmax,sigmoid`` swept under one
    experiment, another image size, ...) would average them as seeds of one experiment: each setting
    becomes its own experiment, ``<name>[head=sigmoid]`` (or ``[data.image_size=48]``), with a warning."""
    for name in dict.fromkeys(r.experiment for r in runs):
        members = [r for r in runs if r.experiment == name]
        factors = [k for k in ("head", "augment", "model") if len({getattr(r, k) for r in members}) > 1]
        keys = sorted(set.intersection(*(set(r.settings) for r in members)))  # what every source recorded
        settings = [k for k in keys if len({repr(r.settings.get(k)) for r in members}) > 1]
        if not (factors or settings):
            continue
        for run in members:
            label = [f"{k}={getattr(run, k)}" for k in factors] or [
                f"{k}={run.settings.get(k)}" for k in settings[:2]
            ]
            run.experiment = f"{name}[{','.join(label)}]"
        log.warning(
            "experiment %s holds runs that trained differently (%s): compared as %s",
            name,
            ", ".join([*factors, *settings][:6]),
            ", ".join(sorted({r.experiment for r in members})),
        )


def load_runs(sources: list[str]) -> list[Run]:
    """Every run named by ``sources`` (run dirs, sweep folders, offline W&B folders, wandb:// URLs),
    in source order. A run named twice (same folder, same W&B run id) counts once; the offline
    folders of one W&B run id are merged wherever they were named. Folders without a finished
    training run are left out with a warning each, an error when no run is left."""
    entries: list[Path | str] = []  # resolved run dirs, W&B run ids and wandb:// groups
    offline: dict[str, list[Path]] = {}  # W&B run id -> its offline-run folders, over all sources
    for source in sources:
        path = Path(source).resolve()
        if source.startswith(WANDB_URL):
            found: list[Path | str] = [source]
        elif not path.is_dir():
            raise SourceError(
                f"{source} is not a folder; give run directories, a sweep folder or wandb://..."
            )
        elif (path / "config.yaml").is_file():
            found = [path]
        elif children := sorted(p.parent for p in path.glob("*/config.yaml")):
            found = list(children)
        elif by_id := offline_folders(path):
            found = list(by_id)
            for run_id, folders in by_id.items():
                offline[run_id] = sorted({*offline.get(run_id, []), *folders})
        else:
            raise SourceError(
                f"{source} is not a run directory, a folder of run directories or an offline W&B run; "
                "give the folder `python -m train` printed as its run directory"
            )
        entries.extend(entry for entry in found if entry not in entries)
    runs: list[Run] = []
    skipped: list[str] = []
    for entry in entries:
        if isinstance(entry, Path):
            try:
                runs.append(run_from_dir(entry))
            except NotTrainingRun as err:
                skipped.append(str(err))
        elif entry.startswith(WANDB_URL):
            runs.extend(wandb_group(entry))
        elif (record := offline_record(offline[entry])).get("job_type") == EVAL_JOB:
            skipped.append(f"{offline[entry][-1]} is a `python -m evaluation` W&B run (job_type={EVAL_JOB})")
        else:
            runs.append(run_from_wandb(record, entry))
    if skipped and not runs:
        raise SourceError(
            f"{'; '.join(skipped)}; give run directories, a sweep folder or offline W&B runs of `python -m train`"
        )
    for reason in skipped:
        log.warning("%s: left out", reason)
    unique_names(runs)
    split_mixed_experiments(runs)
    return runs
