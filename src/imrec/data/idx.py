"""The IDX format of MNIST-style datasets: read it (optionally gzip'd), and write it for tests.

An IDX file is: two zero bytes, one byte naming the element type, one byte with the number of
dimensions, then each dimension as a big-endian uint32, then the elements in C order
(multi-byte elements big-endian).
"""

from __future__ import annotations

import gzip
import math
import os
import struct
from pathlib import Path

import numpy as np

from imrec.data.sources import DatasetError

# IDX type byte -> numpy dtype (IDX stores multi-byte values big-endian).
_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {dt.newbyteorder("="): code for code, dt in _DTYPES.items()}
_GZIP_MAGIC = b"\x1f\x8b"


def parse_idx(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Decode the bytes of an (uncompressed) IDX file into a native-endian array.

    Raises:
        DatasetError: the bytes are not a complete IDX file; ``source`` names it.

    Example:
        >>> parse_idx(bytes([0, 0, 8, 1, 0, 0, 0, 2, 7, 9])).tolist()
        [7, 9]
    """
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise DatasetError(f"{source}: not an IDX file (header {data[:4].hex() or 'empty'})")
    ndim = data[3]
    start = 4 + 4 * ndim
    if len(data) < start:
        raise DatasetError(f"{source}: IDX header is cut short")
    dims = struct.unpack(f">{ndim}I", data[4:start])
    dtype = _DTYPES[data[2]]
    expected = math.prod(dims) * dtype.itemsize
    if len(data) - start != expected:
        raise DatasetError(
            f"{source}: IDX body has {len(data) - start} bytes, the header {list(dims)} "
            f"says {expected}; the file is damaged: delete it to fetch it again"
        )
    array = np.frombuffer(data, dtype=dtype, offset=start).reshape(dims)
    return array.astype(dtype.newbyteorder("="), copy=True)  # writable, native order


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file, gzip'd or not (told by its first bytes, not its name).

    Example:
        >>> path = write_idx(tmp / "t10k-labels-idx1-ubyte.gz", np.array([7, 2, 1], np.uint8))
        >>> read_idx(path)
        array([7, 2, 1], dtype=uint8)
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DatasetError(
                f"{path}: broken gzip data ({e}); delete it to fetch it again"
            ) from e
    return parse_idx(raw, str(path))


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode an array as IDX bytes (uint8, int8, int16, int32, float32 or float64).

    Example:
        >>> idx_bytes(np.array([7, 9], dtype=np.uint8)).hex()
        '00000801000000020709'
    """
    array = np.asarray(array)
    native = array.dtype.newbyteorder("=")
    if native not in _CODES:
        raise ValueError(f"IDX cannot store dtype {array.dtype}")
    if array.ndim > 255:
        raise ValueError(f"IDX allows at most 255 dimensions, got {array.ndim}")
    code = _CODES[native]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    body = np.ascontiguousarray(array, dtype=_DTYPES[code]).tobytes()
    return header + body


def write_idx(path: str | Path, array: np.ndarray) -> Path:
    """Write ``array`` as an IDX file, gzip'd when ``path`` ends in ``.gz``.

    Example:
        >>> write_idx(tmp / "labels-idx1-ubyte.gz", np.arange(3, dtype=np.uint8))
        PosixPath('.../labels-idx1-ubyte.gz')
    """
    path = Path(path)
    data = idx_bytes(array)
    if path.suffix == ".gz":
        data = gzip.compress(data, mtime=0)  # mtime 0: same array, same bytes
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path
