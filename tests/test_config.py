"""Bad configuration fails before any work with a message that names the key and the fix."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
from conftest import TINY, run_train
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from train.__main__ import CONFIG_DIR
from train.augmentation import build_augment
from train.config import Config, MixupConfig, OptimConfig, register_configs
from train.validate import check_optim_and_mixup, check_trainer_args, matches, resolve_precision


def compose_config(overrides: list[str]):
    register_configs()
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        return compose("config", overrides=overrides)


def test_experiments_compose_to_the_schema():
    for name, head in (("softmax_baseline", "softmax"), ("sigmoid_baseline", "sigmoid")):
        cfg = compose_config([f"experiment={name}", "trainer.max_epochs=1", "trainer.limit_train_batches=2"])
        conf = OmegaConf.to_object(cfg)
        assert isinstance(conf, Config)
        assert conf.experiment == name and conf.head.name == head
        assert conf.trainer["max_epochs"] == 1 and conf.trainer["limit_train_batches"] == 2


def test_unknown_key_is_named():
    with pytest.raises(ConfigCompositionException) as err:
        compose_config(["data.bogus=1"])
    assert "Key 'bogus' not in 'DataConfig'" in str(err.value.__cause__) or "data.bogus" in str(err.value)


def test_ill_typed_value_is_named():
    with pytest.raises(ConfigCompositionException) as err:
        compose_config(["data.batch_size=many"])
    cause = str(err.value.__cause__)
    assert "data.batch_size" in cause and "could not be converted to Integer" in cause


def test_trainer_keys_are_checked_against_lightning():
    check_trainer_args({"max_epochs": 1, "limit_train_batches": 2, "strategy": "ddp"})
    with pytest.raises(ValueError, match="trainer.max_epoch is not a lightning.Trainer argument"):
        check_trainer_args({"max_epoch": 1})
    with pytest.raises(ValueError, match="trainer.callbacks is set by the training program"):
        check_trainer_args({"callbacks": []})
    with pytest.raises(
        ValueError, match=r"trainer.max_epochs='abc' does not fit lightning.Trainer's max_epochs"
    ):
        check_trainer_args({"max_epochs": "abc"})
    with pytest.raises(ValueError, match="trainer.precision='bf17' does not fit"):
        check_trainer_args({"precision": "bf17"})
    with pytest.raises(ValueError, match="trainer.max_epochs=True does not fit"):
        check_trainer_args({"max_epochs": True})
    check_trainer_args(
        {"max_epochs": None, "limit_train_batches": 0.5, "devices": [0, 1], "precision": "bf16-mixed"}
    )
    check_trainer_args({"strategy": {"_target_": "lightning.pytorch.strategies.FSDPStrategy"}})  # made later
    assert matches(1, float) and not matches(1.5, int) and matches("warn", bool | typing.Literal["warn"])
    check_optim_and_mixup(OptimConfig(name="lookahead_adamw"), MixupConfig(mode="elem"), 16, {})
    with pytest.raises(ValueError, match="optim.name='bogus' is not a timm optimiser"):
        check_optim_and_mixup(OptimConfig(name="bogus"), MixupConfig(), 16, {})
    with pytest.raises(
        ValueError, match=r"mixup.mode='bogus' is unknown; use one of \['batch', 'pair', 'elem'\]"
    ):
        check_optim_and_mixup(OptimConfig(), MixupConfig(mode="bogus"), 16, {})
    check_optim_and_mixup(OptimConfig(), MixupConfig(), 15, {})  # mixup off: any batch size
    with pytest.raises(ValueError, match="data.batch_size=15 is odd; mixup/cutmix pairs the images"):
        check_optim_and_mixup(OptimConfig(), MixupConfig(cutmix_alpha=1.0), 15, {})
    with pytest.raises(
        ValueError, match="optim.clip_grad=1.0 and trainer.gradient_clip_val=0.5 are both set"
    ):
        check_optim_and_mixup(OptimConfig(clip_grad=1.0), MixupConfig(), 16, {"gradient_clip_val": 0.5})
    assert resolve_precision({"precision": None}, has_cuda=False) == "32-true"
    assert resolve_precision({"precision": None}, has_cuda=True) == "bf16-mixed"
    assert resolve_precision({"precision": None, "accelerator": "cpu"}, has_cuda=True) == "32-true"


def test_cli_errors_are_one_line_and_early(tmp_path: Path, bench_root: Path, cache_dir: Path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    proc = run_train([f"hydra.run.dir={blocker}/run"], tmp_path, cache_dir, check=False)
    assert proc.returncode == 2
    assert (
        f"error: output directory {blocker}/run cannot be created: {blocker} is not a writable folder"
        in proc.stderr
    )
    assert "Traceback" not in proc.stderr

    proc = run_train(
        [
            "data=imagenet",
            f"data.root={tmp_path / 'no_imagenet'}",
            "logger=none",
            f"hydra.run.dir={tmp_path / 'r1'}",
        ],
        tmp_path,
        cache_dir,
        check=False,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert (
        f"error: data.root={tmp_path / 'no_imagenet'} does not exist; expected <root>/train/<wnid>/"
        in proc.stderr
    )

    proc = run_train(
        [
            *TINY,
            f"data.root={bench_root}",
            "model.num_classes=10",
            "logger=none",
            f"hydra.run.dir={tmp_path / 'r2'}",
        ],
        tmp_path,
        cache_dir,
        check=False,
    )
    assert proc.returncode == 2
    assert "error: model.num_classes=10 but the data has 20 classes" in proc.stderr

    for override, message in (
        ("data.bogus=1", "Key 'bogus' not in 'DataConfig'"),
        ("data.batch_size=abc", "Value 'abc' of type 'str' could not be converted to Integer"),
        ("head=foo", "Could not find 'head/foo' Available options in 'head': sigmoid sigmoid_rsb softmax"),
    ):
        proc = run_train([override, f"hydra.run.dir={tmp_path / 'r3'}"], tmp_path, cache_dir, check=False)
        assert proc.returncode == 2 and message in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("error: ")
    assert not (tmp_path / "r3").exists()  # nothing started


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["augment=deepaugment", "augment.precision=FP32"], "precision must be one of"),
        (["augment=deepaugment", "augment.p_edsr=0.7", "augment.p_cae=0.7"], "p_edsr \\+ p_cae must be <= 1"),
        (
            ["augment=deepaugment_noise2net", "augment.steps.0.cae_size=10"],
            "cae_size must be a multiple of 4",
        ),
        (["augment=deepaugment_noise2net", "augment.steps.1.max_eps=-1"], "max_eps must be a finite number"),
        (["augment=noise2net", "augment.p=abc"], "augment: p must be a probability in \\[0, 1\\], got 'abc'"),
        (
            ["augment=noise2net", "augment.fused_cpu=abc"],
            "augment: fused_cpu must be true or false, got 'abc'",
        ),
    ],
)
def test_augment_values_fail_before_any_pretraining(overrides, message, tmp_path: Path):
    """No weights are configured and the training folder does not exist: pretraining would fail with
    'image folder not found', so the value's own error shows it was checked first."""
    cfg = compose_config(overrides)
    pretrain = OmegaConf.to_object(cfg).augment_pretrain
    with pytest.raises(ValueError, match=message):
        build_augment(cfg.augment, tmp_path / "no_train", tmp_path / "cache", 64, pretrain)
    assert not (tmp_path / "cache").exists()
