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

EXPECTED_ERRORS = (ValueError, OSError, RuntimeError, HydraException, OmegaConfBaseException)


def main(args: list[str] | None = None) -> None:
    """Compose the config, evaluate, exit 2 with one line on bad input."""
    args = sys.argv[1:] if args is None else args
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
