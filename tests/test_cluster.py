"""Multi-process and cluster runs: a 2-process CPU DDP multirun grid through the real CLI (each job
once, one W&B run each in the sweep's group, checkpoints that score identically in one process),
SLURM requeue on a real SIGUSR1 with a stub ``scontrol``, the SLURM launcher's sbatch script, run
directories named after the job id, batch/lr semantics and the paper recipes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import submitit
import timm
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import REPO, TINY, cli_env, run_train
from hydra import compose, initialize_config_dir
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.plugins import TorchSyncBatchNorm
from lightning.pytorch.strategies import FSDPStrategy
from omegaconf import OmegaConf
from test_evaluation_cli import run_eval
from test_train import leet_summary
from timm.models.vision_transformer import Block

from augment import CAE, EDSR, DeepAugment, Noise2Net
from augment.base import RandomAugmentation
from train.__main__ import CONFIG_DIR
from train.augmentation import Chain, build_augment, share_networks
from train.cluster import build_strategy, resume_checkpoint
from train.config import AugmentPretrainConfig, Config, OptimConfig, register_configs
from train.heads import create_head
from train.loggers import restore_wandb_environment, wandb_environment
from train.module import ClassifierModule
from train.run_dir import OutputDirError, check_run_dir
from train.scale import scaled_optim

GRID = ("softmax_baseline", "sigmoid_baseline")
PRETRAIN = AugmentPretrainConfig(budget_s=20, max_images=256)  # as test_train's: one cached pretraining
AUGMENT_PRETRAIN = [
    f"augment_pretrain.budget_s={PRETRAIN.budget_s}",
    f"augment_pretrain.max_images={PRETRAIN.max_images}",
]
BASE_LR, BASE_BATCH = 0.05, 16  # TINY's lr at 16 images: 2 processes x 16 double it


def compose_train(overrides: list[str], hydra: bool = False):
    register_configs()
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        return compose("config", overrides=overrides, return_hydra_config=hydra)


def offline_runs(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "wandb").glob("offline-run-*"))


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory, bench_root: Path, cache_dir: Path):
    """``python -m train -m experiment=a,b trainer=ddp_cpu``: two tiny jobs, two processes each, with DeepAugment
    and Noise2Net (whose networks would fail DDP's unused-parameter check if the classifier held them)."""
    sweep = tmp_path_factory.mktemp("grid") / "sweep"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "train",
            "-m",
            f"experiment={','.join(GRID)}",
            *TINY,
            f"data.root={bench_root}",
            "trainer=ddp_cpu",
            "eval=clean",
            "augment=deepaugment_noise2net",  # networks with parameters, outside what DDP reduces
            *AUGMENT_PRETRAIN,
            "optim.lr_scaling=linear",
            f"optim.lr_base_batch={BASE_BATCH}",
            f"optim.lr={BASE_LR}",
            "trainer.enable_progress_bar=false",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=REPO,  # the checkout, as a user runs it (hydra_plugins/ is found there)
        env=cli_env(cache_dir),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, f"multirun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return sweep, proc.stdout + proc.stderr


def test_grid_runs_each_job_once_as_its_own_wandb_run_in_the_sweeps_group(grid, cache_dir: Path):
    sweep, output = grid
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert jobs == [f"{i}_{name}" for i, name in enumerate(GRID)]  # ranks 1 did not re-run the sweep
    assert output.count("Launching 2 jobs") == 1
    ids = set()
    for i, name in enumerate(GRID):
        job = sweep / f"{i}_{name}"
        assert json.loads((job / "metrics.json").read_text())["experiment"] == name
        runs = offline_runs(job)
        run_id = (job / "wandb_run_id.txt").read_text().strip()
        assert len(runs) == 1 and runs[0].name.endswith(run_id)  # logged once, by rank 0
        ids.add(run_id)
        provenance = json.loads((job / "provenance.json").read_text())
        assert provenance["wandb_run_id"] == run_id
        assert "train_ddp_process" not in provenance["command"]  # written by rank 0, not a child
        assert leet_summary(job, cache_dir)["config"]["logger.group"] == sweep.name
        records = subprocess.run(
            [str(Path(sys.executable).parent / "wandb"), "leet", "inspect", "--json", str(runs[0])],
            capture_output=True, text=True, timeout=120, env=cli_env(cache_dir), check=True,
        ).stdout  # fmt: skip
        assert f'"run_group":"{sweep.name}"' in records  # the W&B group of the run itself
    assert len(ids) == 2


def test_ddp_checkpoint_scores_in_one_process_like_the_run_reported(grid, tmp_path: Path, cache_dir: Path):
    sweep, _ = grid
    job = sweep / f"0_{GRID[0]}"
    out = tmp_path / "eval"
    run_eval([f"checkpoint={job / 'checkpoints' / 'last.ckpt'}", f"output_dir={out}"], tmp_path, cache_dir)
    trained = json.loads((job / "metrics.json").read_text())
    scored = json.loads((out / "metrics.json").read_text())
    assert set(scored) == set(trained) and len(trained) > 10
    assert scored.pop("experiment") == trained.pop("experiment") == GRID[0]
    for key, value in trained.items():
        assert scored[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
    for key in (k for k in trained if k.endswith(("/top1", "/top5", "/n"))):
        assert scored[key] == trained[key], key  # each image counted once under DDP


def test_global_batch_is_printed_and_the_linear_rule_scales_lr(grid):
    sweep, output = grid
    lr = BASE_LR * (16 * 2) / BASE_BATCH
    assert output.count(f"global batch 32 = 16 per device x 2 processes x 1 accumulated; lr {lr:g}") == 2
    ckpt = torch.load(
        sweep / f"0_{GRID[0]}" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False
    )
    assert ckpt["lr_schedulers"][0]["base_values"] == [pytest.approx(lr)] * 2


def replayed_streams(job: Path, cache_dir: Path, batches: int) -> list[list[torch.Tensor]]:
    """Each rank's augmentation state after ``batches`` training batches of 16 at 32 px, replayed outside the
    run: the job's augment config built anew (its cached networks), re-seeded with seed + rank as ranks are."""
    config = OmegaConf.load(job / "config.yaml")
    train_root = Path(config.data.root) / "train"
    states = []
    for rank in (0, 1):
        augment, _ = build_augment(config.augment, train_root, cache_dir, 32, PRETRAIN)
        for part in augment.modules():
            if isinstance(part, RandomAugmentation):
                part.reseed(part.seed + rank)
        for _ in range(batches):
            augment(torch.rand(16, 3, 32, 32))
        states.append(augment.get_rng_state())
    return states


def assert_streams_equal(saved: list[list[torch.Tensor]], replayed: list[list[torch.Tensor]]) -> None:
    assert len(saved) == len(replayed) == 2
    for rank, (a, b) in enumerate(zip(saved, replayed, strict=True)):
        assert len(a) == len(b) == 2 and all(torch.equal(x, y) for x, y in zip(a, b, strict=True)), rank


def test_ddp_checkpoint_keeps_each_ranks_own_augmentation_stream(grid, cache_dir: Path):
    sweep, _ = grid
    job = sweep / f"1_{GRID[1]}"
    states = torch.load(job / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)[
        "augment_rng_states_by_rank"
    ]
    assert not any(torch.equal(a, b) for a, b in zip(*states, strict=True))  # ranks draw differently
    assert_streams_equal(states, replayed_streams(job, cache_dir, batches=3))  # one draw per batch


def test_a_resumed_ddp_run_continues_each_ranks_augmentation_stream(grid, tmp_path: Path, cache_dir: Path):
    """Resumed for a second epoch, each of the two processes goes on from the state it saved (not from rank
    0's, not from seed + rank): the checkpoint then holds each rank's stream after 6 batches."""
    sweep, _ = grid
    job = tmp_path / "job"
    shutil.copytree(sweep / f"1_{GRID[1]}", job, symlinks=True)
    run_train([f"resume={job}", "trainer.max_epochs=2"], REPO, cache_dir, timeout=900)
    ckpt = torch.load(job / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 6
    assert_streams_equal(ckpt["augment_rng_states_by_rank"], replayed_streams(job, cache_dir, batches=6))


def share_on_rank(rank: int, root: Path, port: int) -> None:
    """One of two gloo processes: build DeepAugment from this rank's own networks, take rank 0's."""
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2, timeout=timedelta(seconds=120)
    )  # a collective that cannot complete fails instead of hanging the suite
    try:
        aug = DeepAugment(str(root / f"edsr{rank}.pt"), str(root / f"cae{rank}.state"), seed=rank)

        def broadcast(obj):
            box = [obj]
            dist.broadcast_object_list(box, src=0)
            return box[0]

        replaced = share_networks(Chain([aug]), broadcast)
        result = {"replaced": replaced, "edsr": aug.edsr.state_dict(), "cae": aug.cae.state_dict()}
        torch.save(result, root / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_ranks_take_rank_0s_deepaugment_networks(tmp_path: Path):
    """Two processes whose caches hold different networks (nodes that pretrained their own) end with rank 0's."""
    for rank in (0, 1):
        torch.manual_seed(rank)
        torch.save(EDSR().state_dict(), tmp_path / f"edsr{rank}.pt")
        torch.save(CAE().state_dict(), tmp_path / f"cae{rank}.state")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.start_processes(share_on_rank, args=(tmp_path, port), nprocs=2, start_method="spawn")
    first, second = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert first["replaced"] == [] and second["replaced"] == ["steps.0.edsr", "steps.0.cae"]
    for net, suffix in (("edsr", "pt"), ("cae", "state")):
        zero, one = (torch.load(tmp_path / f"{net}{r}.{suffix}", weights_only=True) for r in (0, 1))
        assert not all(torch.equal(zero[k], one[k]) for k in zero)  # the two files differ
        assert all(
            torch.equal(second[net][k], zero[k]) and torch.equal(first[net][k], zero[k]) for k in zero
        ), net


STUB_SCONTROL = """#!/bin/sh
# Records its arguments, then ends the job the way `scontrol requeue` does.
echo "$@" >> "$SCONTROL_LOG"
kill -KILL "$PPID"
"""


def slurm_env(tmp_path: Path, cache_dir: Path, job_id: str) -> dict[str, str]:
    """A one-task SLURM batch job's environment, with a stub ``scontrol`` first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    stub = bin_dir / "scontrol"
    stub.write_text(STUB_SCONTROL)
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    env = cli_env(cache_dir)
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env['PATH']}",
        SCONTROL_LOG=str(tmp_path / "scontrol.log"),
        SLURM_JOB_ID=job_id,
        SLURM_JOB_NAME="train",
        SLURM_NTASKS="1",
        SLURM_NTASKS_PER_NODE="1",
        SLURM_PROCID="0",
        SLURM_LOCALID="0",
        SLURM_NODEID="0",
        SLURM_NODELIST="localhost",
    )
    return env


def test_sigusr1_saves_requeues_and_the_requeued_job_resumes(
    tmp_path: Path, bench_root: Path, cache_dir: Path
):
    env = slurm_env(tmp_path, cache_dir, "4242")
    command = [
        sys.executable, "-m", "train", *TINY, "trainer.max_epochs=3", "trainer.limit_train_batches=8",
        "eval=clean", f"data.root={bench_root}", "trainer.enable_progress_bar=false",
    ]  # fmt: skip
    run_dir = tmp_path / "outputs" / "default" / "slurm-4242"  # no hydra.run.dir: from the job id
    proc = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    epoch_checkpoint = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while not epoch_checkpoint.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before the signal"
    os.kill(proc.pid, signal.SIGUSR1)  # what SLURM sends signal_delay_s before the time limit
    assert proc.wait(timeout=120) == -signal.SIGKILL  # ended by the (stub) requeue
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    hpc = run_dir / "hpc_ckpt_1.ckpt"
    saved_step = torch.load(hpc, map_location="cpu", weights_only=False)["global_step"]
    assert 8 <= saved_step < 24
    assert not (run_dir / "metrics.json").exists()

    last_step = torch.load(epoch_checkpoint, map_location="cpu", weights_only=False)["global_step"]
    again = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-5000:]
    restored = hpc if saved_step > last_step else epoch_checkpoint  # a tie: the epoch-end checkpoint
    assert f"Restoring states from the checkpoint path at {restored}" in again.stdout + again.stderr
    final = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert final["global_step"] == 24 and (run_dir / "metrics.json").is_file()
    run_id = (run_dir / "wandb_run_id.txt").read_text().strip()
    runs = offline_runs(run_dir)
    assert len(runs) == 2 and all(p.name.endswith(run_id) for p in runs)  # the same W&B run, resumed


def test_requeued_job_trains_every_step_when_the_signal_came_between_two_epochs(
    tmp_path: Path, bench_root: Path, cache_dir: Path
):
    """An hpc checkpoint saved as the next epoch was readied (Lightning: ``epoch_progress`` ready
    ahead of started), at the step of the epoch-end ``last.ckpt``: Lightning would restore it into
    an epoch run without batches (16 of 24 steps); the requeued job resumes from ``last.ckpt``."""
    env = slurm_env(tmp_path, cache_dir, "4343")
    command = [
        sys.executable, "-m", "train", *TINY, "trainer.limit_train_batches=8", "eval=clean",
        f"data.root={bench_root}", "trainer.enable_progress_bar=false",
    ]  # fmt: skip
    run_dir = tmp_path / "outputs" / "default" / "slurm-4343"
    subprocess.run(
        [*command, "trainer.max_epochs=1"],
        cwd=tmp_path,
        env=env,
        check=True,
        capture_output=True,
        timeout=600,
    )
    last = run_dir / "checkpoints" / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=False)
    assert state["global_step"] == 8
    progress = state["loops"]["fit_loop"]["epoch_progress"]
    for counters in (progress["total"], progress["current"]):  # the next epoch readied, not started
        counters.update(ready=2, started=1, processed=1, completed=1)
    state["epoch"] = 1
    torch.save(state, run_dir / "hpc_ckpt_1.ckpt")  # newer than last.ckpt, same step
    (run_dir / "metrics.json").unlink()
    again = subprocess.run(
        [*command, "trainer.max_epochs=3"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert again.returncode == 0, again.stderr[-5000:]
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 24
    assert f"Restoring states from the checkpoint path at {last}" in again.stdout + again.stderr


def test_resume_takes_the_furthest_checkpoint_and_only_when_resuming_or_on_slurm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    for key in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)
    (tmp_path / "checkpoints").mkdir()
    last, hpc = tmp_path / "checkpoints" / "last.ckpt", tmp_path / "hpc_ckpt_1.ckpt"

    def save(path: Path, step: int, mtime: int) -> None:
        torch.save({"global_step": step, "state_dict": {"w": torch.zeros(3)}}, path)
        os.utime(path, ns=(mtime, mtime))

    save(hpc, 8, 1_000)
    save(last, 16, 2_000)
    assert resume_checkpoint(tmp_path, resume=False) is None
    assert resume_checkpoint(tmp_path, resume=True) == last  # an older hpc_ckpt is not reloaded
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_JOB_NAME", "train")
    save(hpc, 20, 3_000)
    assert resume_checkpoint(tmp_path, resume=False) == hpc  # a requeued job, no resume= needed
    save(hpc, 16, 4_000)  # written between two epochs, after last.ckpt: same step
    assert resume_checkpoint(tmp_path, resume=False) == last
    save(last, 12, 5_000)  # the newer file holds fewer steps: steps decide, not modification times
    assert resume_checkpoint(tmp_path, resume=False) == hpc
    assert resume_checkpoint(tmp_path / "elsewhere", resume=False) is None


@pytest.mark.parametrize(
    ("env", "stamp"),
    [({"SLURM_JOB_ID": "77"}, "slurm-77"), ({"SLURM_JOB_ID": "80", "SLURM_ARRAY_JOB_ID": "5", "SLURM_ARRAY_TASK_ID": "3"}, "slurm-5_3")],
)  # fmt: skip
def test_run_and_sweep_dirs_are_named_after_the_slurm_job(monkeypatch: pytest.MonkeyPatch, env, stamp):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    cfg = compose_train(["experiment=sigmoid_baseline"], hydra=True)
    assert cfg.hydra.run.dir == f"outputs/sigmoid_baseline/{stamp}"
    assert cfg.hydra.sweep.dir == f"multirun/{stamp}"


def test_default_run_dirs_of_two_processes_differ(monkeypatch: pytest.MonkeyPatch):
    """Two runs started in the same second: the time stamp carries the process id."""
    for key in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)
    cfg = compose_train(["experiment=sigmoid_baseline"], hydra=True)
    assert cfg.hydra.run.dir.startswith("outputs/sigmoid_baseline/") and cfg.hydra.run.dir.endswith(
        f"_{os.getpid()}"
    )


def test_a_slurm_job_continues_only_a_run_of_the_same_settings(tmp_path: Path):
    """A requeued job comes back to its folder; a second training of other settings in the same job (same
    folder, slurm-<job id>) must not take over the first one's checkpoint and files."""
    cfg = compose_train(["experiment=sigmoid_baseline", "seed=0"])
    (tmp_path / "provenance.json").write_text("{}")
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    check_run_dir(tmp_path, cfg, resuming=False, slurm=True)  # the requeue: same settings
    other = compose_train(["experiment=sigmoid_baseline", "seed=1"])
    with pytest.raises(OutputDirError, match=r"holds a run of other settings \(seed=0 there, 1 here\)"):
        check_run_dir(tmp_path, other, resuming=False, slurm=True)
    with pytest.raises(OutputDirError, match="already holds a run"):  # outside SLURM: only with resume=
        check_run_dir(tmp_path, cfg, resuming=False, slurm=False)
    check_run_dir(tmp_path, other, resuming=True, slurm=False)
    check_run_dir(tmp_path / "fresh", other, resuming=False, slurm=True)


def test_slurm_launcher_asks_for_lightnings_requeue_signal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit wants srun on PATH; never run
    (tmp_path / "bin" / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    cfg = compose_train(
        ["hydra/launcher=slurm", "hydra.launcher.nodes=2", "hydra.launcher.partition=gpu"], hydra=True
    )
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert params.pop("_target_").endswith("SlurmLauncher")
    # the launcher's own mapping of its keys onto submitit (hydra_submitit_launcher.BaseSubmititLauncher)
    executor = submitit.AutoExecutor(
        folder=tmp_path, cluster="slurm", slurm_max_num_timeout=params.pop("max_num_timeout")
    )
    params.pop("submitit_folder")
    base = {
        "timeout_min",
        "cpus_per_task",
        "gpus_per_node",
        "tasks_per_node",
        "mem_gb",
        "nodes",
        "name",
        "stderr_to_stdout",
    }
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    script = executor._executor._make_submission_file_text("python -m train", "uid")
    lines = set(script.splitlines())
    assert {"#SBATCH --signal=USR1@90", "#SBATCH --requeue", "#SBATCH --nodes=2"} <= lines
    assert {"#SBATCH --gpus-per-node=8", "#SBATCH --ntasks-per-node=8", "#SBATCH --partition=gpu"} <= lines
    assert "USR2" not in script  # submitit's own checkpoint-and-resubmit signal is never asked for


def test_batch_semantics_and_scaling_rule():
    cfg = OptimConfig(lr=0.1, lr_scaling="linear", lr_base_batch=256)
    assert scaled_optim(cfg, 1024).lr == pytest.approx(0.4)
    assert scaled_optim(OptimConfig(lr=0.1), 1024).lr == 0.1  # none: as given
    with pytest.raises(ValueError, match=r"optim.lr_scaling='sqrt' is unknown; use none or linear"):
        scaled_optim(OptimConfig(lr_scaling="sqrt"), 8)


def test_sync_batchnorm_converts_the_classifier_and_never_the_augmentation():
    conf: Config = OmegaConf.to_object(compose_train(["model.name=test_resnet"]))
    augment = Noise2Net(seed=0)
    module = ClassifierModule(conf.model, create_head("softmax"), conf.optim, conf.mixup, 20, augment=augment)
    batchnorms = sum(isinstance(m, torch.nn.BatchNorm2d) for m in module.classifier.modules())
    assert batchnorms > 0
    converted = TorchSyncBatchNorm().apply(module)  # what trainer.sync_batchnorm=true does
    assert sum(isinstance(m, torch.nn.SyncBatchNorm) for m in converted.classifier.modules()) == batchnorms
    assert all(m is not augment for m in converted.modules()) and converted.augment is augment


def test_fsdp_config_builds_a_strategy_with_one_unit_per_vit_block():
    cfg = compose_train(["trainer=fsdp"])
    strategy = build_strategy(OmegaConf.to_container(cfg.trainer, resolve=True)["strategy"])
    assert isinstance(strategy, FSDPStrategy) and strategy._state_dict_type == "full"
    policy = strategy.kwargs["auto_wrap_policy"]
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    wrapped = [m for m in vit.modules() if policy(m, recurse=False, nonwrapped_numel=0)]
    assert {type(m) for m in wrapped} == {Block} and len(wrapped) == len(vit.blocks)


def test_wandb_environment_is_restored_after_an_offline_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    saved = wandb_environment()
    logger = WandbLogger(save_dir=str(tmp_path), offline=True, project="p")
    logger.experiment.finish()  # a real offline run: Lightning set WANDB_MODE for the whole process
    assert os.environ.get("WANDB_MODE") == "dryrun"
    restore_wandb_environment(saved)
    assert wandb_environment() == saved and "WANDB_MODE" not in os.environ


REFERENCE = {  # shared/reference/deepaugment.md, training.md
    "r50_deepaugment_ref": dict(opt="sgd", lr=0.1, wd=1e-4, momentum=0.9, batch=1024, head="softmax"),
    "r50_rsb_bce": dict(opt="lamb", wd=0.02, epochs=300, head="sigmoid"),
}


@pytest.mark.parametrize("head", ["softmax", "sigmoid"])
def test_deepaugment_reference_recipe(head: str):
    conf: Config = OmegaConf.to_object(compose_train(["experiment=r50_deepaugment_ref", f"head={head}"]))
    ref = REFERENCE["r50_deepaugment_ref"]
    assert conf.experiment == f"r50_deepaugment_ref_{head}" and conf.head.name == head
    assert (conf.model.name, conf.data.name, conf.data.image_size) == ("resnet50", "imagenet", 224)
    assert conf.augment["_target_"] == "augment.DeepAugment"
    assert conf.augment["p_edsr"] == pytest.approx(1 / 3) and conf.augment["p_cae"] == pytest.approx(1 / 3)
    assert (conf.optim.name, conf.optim.lr, conf.optim.weight_decay, conf.optim.momentum) == (
        ref["opt"],
        ref["lr"],
        ref["wd"],
        ref["momentum"],
    )
    assert conf.data.batch_size * 8 == ref["batch"] == conf.optim.lr_base_batch  # 8 GPUs: lr as published
    assert scaled_optim(conf.optim, 512).lr == pytest.approx(ref["lr"] / 2)
    assert (conf.mixup.mixup_alpha, conf.mixup.cutmix_alpha, conf.data.auto_augment) == (0.0, 0.0, None)


@pytest.mark.parametrize("head", ["sigmoid", "softmax"])
def test_resnet_strikes_back_recipe(head: str):
    conf: Config = OmegaConf.to_object(
        compose_train(["experiment=r50_rsb_bce", *([] if head == "sigmoid" else ["head=softmax"])])
    )
    ref = REFERENCE["r50_rsb_bce"]
    assert conf.experiment == f"r50_rsb_bce_{head}" and conf.head.name == head
    assert (conf.optim.name, conf.optim.weight_decay, conf.trainer["max_epochs"]) == (
        ref["opt"],
        ref["wd"],
        ref["epochs"],
    )
    assert (conf.model.name, conf.model.drop_path_rate) == ("resnet50", 0.05)
    assert conf.data.auto_augment.startswith("rand-m7")
    assert (conf.mixup.mixup_alpha, conf.mixup.cutmix_alpha) == (0.1, 1.0)
    assert conf.augment == {}
    if head == "sigmoid":  # BCE, target threshold 0.2, no smoothing
        assert (conf.head.target_threshold, conf.head.smoothing) == (0.2, 0.0)
    create_head(**vars(conf.head))  # both forms build (no sigmoid-only key left on the softmax form)
