"""Checkpoints of a group's whole model-axis state, through orbax, written in the background.

The state saved is the stacked pytree `{params, opt_state, step, rng, diverged, diverged_step}` with a leading
`[M]` axis. Batches are drawn from `fold_in(rng, step)`, so this is also the data sampler's position: a group
restored at step t continues exactly as an uninterrupted run would.

`save` returns once the state has been copied to host memory and writes the files on a background thread while
training continues; the next `save`, `restore_latest` and `close` wait for it. Orbax copies the arrays before
returning (device-to-host for accelerator arrays; on CPU it holds a reference that stops a donating step from
reusing the buffer; numpy leaves are deep-copied), so the training step may donate the state it was given.

Orbax writes each checkpoint into `<step>.orbax-checkpoint-tmp` and renames it when complete; on Google Cloud
Storage, which has no atomic rename, a checkpoint is complete once its `commit_success.txt` is written. Either way a
checkpoint half-written by a killed process is never restored, and its leftovers are removed when the folder is next
opened (in the background; the first save waits for that).

Beside the folder, `<folder>_seconds.json` records the training seconds spent up to each saved step, over every
launch, so that a resumed group's rows count the time of the launches before it (`seconds_at`).

Directories are `etils.epath` paths, so `gs://bucket/...` works as well as a local folder. In a multi-process run
every process calls every method; orbax synchronises them and writes each process's shards.
"""

import json
import os

from absl import logging
from etils import epath
import jax
import orbax.checkpoint as ocp

from slicejax import files


def _directory(directory: epath.PathLike) -> epath.Path:
  """`directory` as an absolute path; a `gs://`-like URI is absolute already and `resolve` would mangle it."""
  path = epath.Path(directory)
  return path if "://" in os.fspath(directory) else path.resolve()


class GroupCheckpoints:
  """Saves and restores one group's stacked state under `directory/<step>`, keeping the latest `keep`."""

  def __init__(self, directory: epath.PathLike, keep: int = 2):
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=True,
                                           cleanup_tmp_directories=True)
    directory = _directory(directory)
    self._manager = ocp.CheckpointManager(directory, options=options)
    self._seconds_path = directory.parent / f"{directory.name}_seconds.json"

  def restore_latest(self, template):
    """The latest complete checkpoint restored into `template`'s structure, or None if there is none.

    Args:
      template: a stacked state with the right shapes and dtypes (e.g. the freshly initialised one).
    """
    # The manager lists a step as soon as its save starts; wait so that the step restored is complete.
    self._manager.wait_until_finished()
    step = self._manager.latest_step()
    if step is None:
      return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    state = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
    logging.info("Restored the checkpoint of step %d from %s.", step, self._manager.directory)
    return state

  def save(self, step: int, state, seconds: float | None = None) -> None:
    """Starts writing `state` as the checkpoint of `step` and returns; the caller may then donate `state`.

    Waits for the previous save first; the oldest checkpoints beyond `keep` are deleted once this one is complete.
    `seconds`: the training seconds spent up to `step`, over every launch, returned by `seconds_at(step)`.
    """
    self._manager.save(step, args=ocp.args.StandardSave(state), force=True)
    if seconds is not None and jax.process_index() == 0:
      recorded = self._read_seconds()
      recorded[str(step)] = float(seconds)
      text = json.dumps(recorded, sort_keys=True)
      if "://" in os.fspath(self._seconds_path):
        self._seconds_path.write_text(text)
      else:
        files.atomic_write(self._seconds_path, text)

  def seconds_at(self, step: int) -> float:
    """The training seconds recorded with the checkpoint of `step`; 0.0 if none were (an older checkpoint)."""
    return self._read_seconds().get(str(step), 0.0)

  def _read_seconds(self) -> dict:
    return json.loads(self._seconds_path.read_text()) if self._seconds_path.exists() else {}

  def close(self) -> None:
    """Waits for the save in progress to complete."""
    self._manager.close()
