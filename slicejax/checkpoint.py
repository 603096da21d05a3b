"""Checkpoints of a group's whole model-axis state, through orbax.

The state saved is the stacked pytree `{params, opt_state, step, rng, diverged, diverged_step}` with a leading
`[M]` axis. Batches are drawn from `fold_in(rng, step)`, so this is also the data sampler's position: a group
restored at step t continues exactly as an uninterrupted run would. Orbax writes each checkpoint into a temporary
folder and renames it when complete, so a checkpoint half-written by a killed process is never restored (and its
leftovers are cleaned up).
"""

import pathlib

from absl import logging
import jax
import orbax.checkpoint as ocp


class GroupCheckpoints:
  """Saves and restores one group's stacked state under `directory/<step>`."""

  def __init__(self, directory: pathlib.Path, keep: int = 2):
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False,
                                           cleanup_tmp_directories=True)
    self._manager = ocp.CheckpointManager(pathlib.Path(directory).resolve(), options=options)

  def restore_latest(self, template):
    """The latest complete checkpoint restored into `template`'s structure, or None if there is none.

    Args:
      template: a stacked state with the right shapes and dtypes (e.g. the freshly initialised one).
    """
    step = self._manager.latest_step()
    if step is None:
      return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    state = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
    logging.info("Restored the checkpoint of step %d from %s.", step, self._manager.directory)
    return state

  def save(self, step: int, state) -> None:
    self._manager.save(step, args=ocp.args.StandardSave(state), force=True)
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()
