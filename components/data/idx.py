"""Read and write IDX files (the MNIST / Fashion-MNIST format), raw or gzipped, with numpy only.

Format (http://yann.lecun.com/exdb/mnist/): two zero bytes, a dtype code, the number of
dimensions, then one big-endian uint32 per dimension, then the array in C order, big-endian.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

GZIP_MAGIC = b"\x1f\x8b"

# IDX dtype code -> big-endian numpy dtype
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODE_BY_KIND = {(dt.kind, dt.itemsize): code for code, dt in IDX_DTYPES.items()}


class IdxError(ValueError):
    """An IDX payload that is truncated, gzip-corrupt or has a bad header."""


def gunzip_if_needed(payload: bytes, what: str = "payload") -> bytes:
    """Return ``payload`` decompressed when it starts with the gzip magic, else unchanged.

    Args:
        payload: raw or gzipped bytes.
        what: name used in error messages (a file name).

    Returns:
        The decompressed bytes.
    """
    if not payload.startswith(GZIP_MAGIC):
        return payload
    try:
        return gzip.decompress(payload)
    except (OSError, EOFError, zlib.error) as exc:
        raise IdxError(f"{what}: corrupt gzip data ({exc})") from None


def parse_idx(raw: bytes, what: str = "payload") -> np.ndarray:
    """Parse decompressed IDX bytes into a native-endian array.

    Args:
        raw: the whole, uncompressed IDX file.
        what: name used in error messages.

    Returns:
        An array with the dims from the header, e.g. ``(N, 28, 28)`` uint8 for images.
    """
    if len(raw) < 4:
        raise IdxError(f"{what}: {len(raw)} bytes is too short for an IDX header")
    zero, code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or code not in IDX_DTYPES or ndim == 0:
        raise IdxError(f"{what}: bad IDX magic number 0x{raw[:4].hex()} (not an IDX file?)")
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise IdxError(f"{what}: truncated IDX header ({len(raw)} bytes, need {header_len})")
    dims = struct.unpack(f">{ndim}I", raw[4:header_len])
    dtype = IDX_DTYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    body = len(raw) - header_len
    if body != expected:
        kind = "truncated" if body < expected else "has trailing bytes"
        raise IdxError(f"{what}: IDX data {kind}: header says {dims} ({expected} bytes), file has {body}")
    array = np.frombuffer(raw, dtype=dtype, offset=header_len).reshape(dims)
    return array.astype(dtype.newbyteorder("="))  # native byte order, and a writable copy


def read_idx(source: str | Path | bytes) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw, detected from the content) or IDX bytes.

    Args:
        source: a path, or the file's bytes.

    Returns:
        The array, native byte order, e.g. ``(N, 28, 28)`` uint8 images or ``(N,)`` uint8 labels.

    Raises:
        IdxError: corrupt gzip, bad magic number, or a byte length that does not match the dims.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        payload, what = bytes(source), "IDX bytes"
    else:
        payload, what = Path(source).read_bytes(), str(source)
    return parse_idx(gunzip_if_needed(payload, what), what)


def idx_bytes(array: np.ndarray) -> bytes:
    """Serialise ``array`` to uncompressed IDX bytes (dtype must be one IDX supports)."""
    array = np.asarray(array)
    code = _CODE_BY_KIND.get((array.dtype.kind, array.dtype.itemsize))
    if code is None or array.ndim == 0 or array.ndim > 255:
        raise IdxError(f"cannot write {array.dtype} with {array.ndim} dims as IDX")
    header = struct.pack(f">HBB{array.ndim}I", 0, code, array.ndim, *array.shape)
    return header + np.ascontiguousarray(array, dtype=IDX_DTYPES[code]).tobytes()


def write_idx(path: str | Path, array: np.ndarray, gzip: bool = False) -> Path:
    """Write ``array`` as an IDX file, gzipped when ``gzip`` (deterministic: mtime 0).

    Args:
        path: target file; the caller picks the name (``.gz`` suffix is not added).
        array: uint8/int8/int16/int32/float32/float64 array of any shape.
        gzip: compress the file.

    Returns:
        ``path`` as a Path.
    """
    path = Path(path)
    payload = idx_bytes(array)
    if gzip:
        payload = _gzip_compress(payload)
    path.write_bytes(payload)
    return path


def _gzip_compress(payload: bytes) -> bytes:
    # module-level `gzip` is shadowed by write_idx's argument name, hence this helper
    return gzip.compress(payload, mtime=0)
