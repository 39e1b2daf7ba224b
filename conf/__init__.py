"""The Hydra configs of ``python -m train`` and ``python -m evaluation`` (YAML files here).

Importing this package registers the configs' resolver ``${run_stamp:}`` (:mod:`train.cluster`).
"""

from train.cluster import register_resolvers

register_resolvers()
