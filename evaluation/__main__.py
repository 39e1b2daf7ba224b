"""``python -m evaluation checkpoint=<run>/checkpoints/last.ckpt [overrides]``: score a model on
every configured test variant (Hydra override syntax; see ``conf/evaluate.yaml``).

Also for timm weights: ``python -m evaluation model.name=resnet50 model.pretrained=<file>
head=softmax data=imagenet data.root=<folder>``. Errors are one ``error: ...`` line, exit code 2.
"""

from __future__ import annotations

import logging
import sys

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from evaluation.config import compose_config
from train.config import error_line

USAGE = """usage: python -m evaluation checkpoint=<run>/checkpoints/last.ckpt [key=value ...]
       python -m evaluation model.name=<timm model> model.pretrained=<weights file> head=softmax|sigmoid \\
           data=imagenet data.root=<folder> [key=value ...]

Scores a model on every configured ImageNet test variant; writes metrics.json, results.csv, results.txt,
history.csv, config.yaml and plots/ (and logits/ with save_logits=true) to output_dir.

keys (Hydra override syntax; a checkpoint's run config supplies data, model, head and eval):
  checkpoint=<file>            a `python -m train` run's last.ckpt
  model.name, model.pretrained timm model and weights file (instead of a checkpoint)
  head=softmax|sigmoid         how logits become probabilities
  data=benchmark|imagenet|imagenet_wds, data.root=<folder>, data.classes=<wnid list>
  eval=all|clean|robustness    variant presets; eval.variants=[imagenet,imagenet-a,...]
  +eval.paths.<variant>=<dir>  a release stored outside data.root
  eval.c_normaliser=alexnet|none|run:<run dir>   ImageNet-C's CE normaliser
  eval.max_images=<n>          a quick look: at most n images per variant
  eval.strict=true             a missing variant is an error (default: skipped with a warning)
  save_logits=true             also write logits/<variant>.npz
  output_dir=<folder>          results folder (default outputs/eval/<time>; must not hold results)
  logger=wandb                 also log to W&B (job_type=eval, in the checkpoint run's group)
  trainer.devices=<n>          evaluate on n devices (DDP; exact metrics)
"""

EXPECTED_ERRORS = (ValueError, OSError, RuntimeError, HydraException, OmegaConfBaseException)


def main(args: list[str] | None = None) -> None:
    """Compose the config, evaluate, exit 2 with one line on bad input."""
    args = sys.argv[1:] if args is None else args
    if any(a in ("-h", "--help") for a in args):
        print(USAGE)
        return
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    try:
        cfg = compose_config(args)
        if not any(a.startswith("output_dir=") for a in args):
            # DDP workers re-run this command line: they must write to the same, resolved folder
            sys.argv = [sys.argv[0], *args, f"output_dir={cfg.output_dir}"]
            cfg.output_dir = str(cfg.output_dir)
        from evaluation.program import evaluate

        evaluate(cfg)
    except EXPECTED_ERRORS as err:
        print(f"error: {error_line(err)}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
