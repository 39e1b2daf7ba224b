"""``python -m evaluation.compare``: one side-by-side report of several training runs.

Runs come from run directories (their own ``metrics.json``/``history.csv``, ``config.yaml``,
``logits/`` and, where present, the offline W&B run), from offline W&B run folders, or online from
a W&B group (``wandb://entity/project/group``). The report is a Markdown + CSV table (one row per
run, or per experiment with mean ± std over seeds; diffs against a baseline), paired bootstrap
confidence intervals of head-vs-head and with-vs-without-augmentation top-1 differences over images,
and PNG charts.
"""
