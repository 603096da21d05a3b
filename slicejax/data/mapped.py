"""Arrays that stay on the disk: `MappedArray`, a read-only array of a member of an uncompressed `.npz` file (a cache
entry of `slicejax.data`), that maps the file only while a part of it is read.

Why not `np.load(mmap_mode="r")`: a mapping that lives as long as its array keeps every page it has touched resident
in the process (they count in its RSS until the mapping goes), so a pass over a dataset larger than memory, held as
long-lived mappings, grows the process to the dataset's size. A `MappedArray` maps the file for one read, copies
what was asked for and unmaps it: the process holds the parts in use, never the whole dataset, and the page cache
keeps what the machine has room for.

It behaves as a read-only numpy array where slicejax uses one: `shape`, `dtype`, `ndim`, `size`, `nbytes`, `len`,
indexing and iteration (a copy of the part read), `np.asarray` (the whole array), numpy functions and operators
(through `__array__` and `__array_ufunc__`), and any other ndarray attribute or method on a copy of the whole array.
"""

import pathlib
import zipfile

import numpy as np

# The fixed part of a zip local file header, and where its name and extra field lengths sit (PKWARE APPNOTE 4.3.7).
_LOCAL_HEADER_BYTES = 30
_LOCAL_HEADER_MAGIC = b"PK\x03\x04"


class MappedArray(np.lib.mixins.NDArrayOperatorsMixin):
  """A C-ordered array at byte `offset` of the file `path`, read on access (see the module docstring)."""

  def __init__(self, path, offset: int, shape, dtype):
    self.path, self.offset = str(path), int(offset)
    self.shape, self.dtype = tuple(int(n) for n in shape), np.dtype(dtype)

  @property
  def ndim(self) -> int:
    return len(self.shape)

  @property
  def size(self) -> int:
    return int(np.prod(self.shape, dtype=np.int64))

  @property
  def nbytes(self) -> int:
    return self.size * self.dtype.itemsize

  def __len__(self) -> int:
    if not self.shape:
      raise TypeError("len() of a 0-d array")
    return self.shape[0]

  def __repr__(self) -> str:
    return f"MappedArray({self.path!r}, offset={self.offset}, shape={self.shape}, dtype={self.dtype})"

  def __getitem__(self, index) -> np.ndarray:
    if self.size == 0:
      return np.empty(self.shape, self.dtype)[index]
    mapping = np.memmap(self.path, dtype=self.dtype, mode="r", offset=self.offset, shape=self.shape, order="C")
    try:
      return np.array(mapping[index])
    finally:
      del mapping  # unmapped here: the pages read leave the process with it

  def __iter__(self):
    for i in range(len(self)):
      yield self[i]

  def __array__(self, dtype=None, copy=None):
    del copy  # always a new array
    whole = self[...]
    return whole if dtype is None else whole.astype(dtype, copy=False)

  def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
    inputs = tuple(np.asarray(x) if isinstance(x, MappedArray) else x for x in inputs)
    return getattr(ufunc, method)(*inputs, **kwargs)

  def __getattr__(self, name):
    # Every other ndarray attribute (astype, ravel, min, tobytes, ...) on the whole array; never for the attributes
    # this class sets, so that a half-built object (copy, pickle) raises AttributeError rather than recursing.
    if name.startswith("__") or name in ("path", "offset", "shape", "dtype"):
      raise AttributeError(name)
    return getattr(np.asarray(self), name)


def _npy_header(f) -> tuple:
  """`(shape, dtype)` of the `.npy` stream at `f`'s position, which is left at the first data byte."""
  version = np.lib.format.read_magic(f)
  read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
  if read is None:
    raise ValueError(f"unsupported .npy version {version}")
  shape, fortran, dtype = read(f)
  if fortran:
    raise ValueError("Fortran-ordered arrays are not mapped")
  if dtype.hasobject:
    raise ValueError("object arrays are not mapped")
  return shape, dtype


def open_npz(path) -> dict:
  """name -> `MappedArray` of every array of the uncompressed `.npz` file at `path` (as `np.savez` writes them).

  Raises:
    ValueError: a member is compressed, or not a mappable `.npy` array.
    zipfile.BadZipFile, OSError: the file is not a readable zip file.
  """
  path = pathlib.Path(path)
  arrays = {}
  with zipfile.ZipFile(path) as archive, open(path, "rb") as f:
    for info in archive.infolist():
      if not info.filename.endswith(".npy"):
        continue
      if info.compress_type != zipfile.ZIP_STORED:
        raise ValueError(f"{path}: member {info.filename} is compressed")
      f.seek(info.header_offset)
      header = f.read(_LOCAL_HEADER_BYTES)
      if len(header) != _LOCAL_HEADER_BYTES or header[:4] != _LOCAL_HEADER_MAGIC:
        raise zipfile.BadZipFile(f"{path}: no local header for {info.filename}")
      name_bytes, extra_bytes = int.from_bytes(header[26:28], "little"), int.from_bytes(header[28:30], "little")
      start = info.header_offset + _LOCAL_HEADER_BYTES + name_bytes + extra_bytes
      f.seek(start)
      shape, dtype = _npy_header(f)
      array = MappedArray(path, f.tell(), shape, dtype)
      if f.tell() - start + array.nbytes != info.file_size:
        raise zipfile.BadZipFile(f"{path}: member {info.filename} holds {info.file_size} bytes, its header says "
                                 f"{f.tell() - start + array.nbytes}")
      arrays[info.filename[:-len(".npy")]] = array
  return arrays
