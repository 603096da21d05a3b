"""Configs: every key's default (`defaults`, plain data), the checks of their values (`checks`) and `get_config(arg)`'s
argument (`args`); the settings derived from a dataset's fingerprint are `slicejax.data.fingerprint`'s. Nothing here
imports another part of slicejax than `slicejax.errors`.

`from slicejax import config as config_lib` gives the functions that configs, `launch.py` and tests call; none of
them imports JAX.
"""

from slicejax.config.args import load, parse_arg
from slicejax.config.checks import validate, validate_export, validate_plan, validate_predict
from slicejax.config.defaults import base, export_block, plan_block, predict_block

__all__ = ["base", "export_block", "load", "parse_arg", "plan_block", "predict_block", "validate", "validate_export",
           "validate_plan", "validate_predict"]
