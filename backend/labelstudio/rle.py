"""Label Studio's brush RLE, encoded and decoded with numpy.

Why not ``label_studio_sdk.converter.brush``: it builds a string of '0'/'1' characters one run
at a time, which takes a fraction of a second to seconds to encode a 3000x2000 mask (per image,
inside Label Studio's 100 s budget for a whole batch) and about 20 s to decode one (retraining
reads every corrected mask). This module writes the same bytes with a few numpy passes.

The format (``rle-pack``, used by the Label Studio frontend): the mask's RGBA bytes, here
every pixel as ``(v, v, v, v)`` with ``v`` 0 or 255, as a bit stream of

* a header: number of values (32 bits), word size - 1 (5 bits), and four run-length field
  widths - 1 (4 bits each; Label Studio uses 3, 4, 8 and 16);
* tokens: a repeat flag (1 bit), the index of the length field's width (2 bits), the length - 1,
  then one value (repeat) or that many values (literal) of ``word size`` bits each;
* zero bits up to the next byte, or a whole zero byte when the stream ends on a byte boundary
  (the SDK always pads; being byte-identical to the SDK is this module's contract).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

WORD_SIZE = 8
RLE_SIZES = (3, 4, 8, 16)
HEADER_BITS = 32 + 5 + 4 * 4
_MAX_RUN = 1 << RLE_SIZES[-1]


def _header(num: int) -> int:
    header = num
    header = (header << 5) | (WORD_SIZE - 1)
    for size in RLE_SIZES:
        header = (header << 4) | (size - 1)
    return header


# Token classes by run length: 1 (a one-value literal), 2-8, 9-16, 17-256, 257-65536.
_CLASS_BOUNDS = np.array([1, 8, 16, 256], dtype=np.int64)
_CLASS_BITS = np.array([14, 14, 15, 19, 27], dtype=np.int64)
_CLASS_PREFIX = np.array([0, 1 << 13, (1 << 14) | (1 << 12), (1 << 18) | (2 << 16), (1 << 26) | (3 << 24)], np.int64)


def _tokens(lengths: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per run, as the SDK writes it: (code, bit count, runs longer than 65536, their repeats).

    A run of 1 is a one-value literal. A run longer than 65536 is written as ``repeats``
    full-length tokens followed by the rest, and the rest keeps the 16-bit length field even
    when it is short: its class comes from the whole run's length.
    """
    lengths = lengths.astype(np.int64, copy=False)
    cls = np.searchsorted(_CLASS_BOUNDS, lengths)
    long = np.flatnonzero(lengths > _MAX_RUN)  # rare: a few background stretches per mask
    repeats = (lengths[long] - 1) // _MAX_RUN
    if long.size:
        lengths = lengths.copy()
        lengths[long] -= repeats * _MAX_RUN
    code = _CLASS_PREFIX[cls] | ((lengths - 1) << 8) | values.astype(np.int64, copy=False)
    return code, _CLASS_BITS[cls], long, repeats


_FULL_RUN = int(_CLASS_PREFIX[4] | ((_MAX_RUN - 1) << 8))
"""A full-length (65536) repeat token, without its value."""


def _scatter(code: np.ndarray, starts: np.ndarray, nbits: np.ndarray | int, nwords: int) -> np.ndarray:
    """The 32-bit words (as float64) of a stream holding only these tokens at these bit offsets.

    A token (14 to 27 bits) touches at most two words: shifted into the 64-bit window of the word
    it starts in and the next, its high and low halves are its two contributions. Tokens never
    share a bit, so the sum of the contributions to a word is their OR, and ``np.bincount`` adds
    them in one pass (float64 holds every 32-bit sum exactly).
    """
    window = code.astype(np.uint64) << (64 - (starts & 31) - nbits).astype(np.uint64)
    word = starts >> 5
    return np.bincount(
        np.concatenate((word, word + 1)),
        weights=np.concatenate((window >> np.uint64(32), window & np.uint64(0xFFFFFFFF))).astype(np.float64),
        minlength=nwords,
    )


def _pack(num: int, lengths: np.ndarray, values: np.ndarray) -> list[int]:
    """Header plus runs -> the SDK's byte list, built as big-endian 32-bit words.

    Tokens need no order, only their start bits: the full-length tokens of long runs are
    scattered on their own, into the gaps left for them.
    """
    if num >= 1 << 32:
        raise ValueError(f"{num:,} values do not fit the 32-bit length of Label Studio's RLE")
    code, nbits, long, repeats = _tokens(lengths, values)
    span = nbits
    if long.size:
        span = nbits.copy()
        span[long] += repeats * _CLASS_BITS[4]
    ends = np.cumsum(span)
    ends += HEADER_BITS
    total = int(ends[-1]) if len(ends) else HEADER_BITS
    nbytes = total // 8 + 1  # the SDK pads a whole zero byte when the bits end on a byte boundary
    nwords = nbytes // 4 + 2
    words = _scatter(code, ends - nbits, nbits, nwords)
    if long.size:
        first = np.repeat(ends[long] - span[long], repeats)
        index = np.arange(first.size) - np.repeat(np.cumsum(repeats) - repeats, repeats)
        full = np.repeat(_FULL_RUN | values[long].astype(np.int64), repeats)
        words += _scatter(full, first + index * _CLASS_BITS[4], int(_CLASS_BITS[4]), nwords)
    out = words.astype(np.uint32).astype(">u4").view(np.uint8)
    out[:8] |= np.frombuffer((_header(num) << (64 - HEADER_BITS)).to_bytes(8, "big"), np.uint8)
    return list(out[:nbytes].tobytes())  # faster than tolist(), the same ints


def _changes(flat: np.ndarray) -> np.ndarray:
    """Indices ``i`` of a 1-D array where ``flat[i + 1] != flat[i]``.

    ``np.flatnonzero`` over millions of flags is the encoder's largest cost, and masks change
    rarely: find the nonzero 8-flag words first, then the flags inside those words only.
    """
    diff = flat[1:] != flat[:-1]
    n8 = diff.size // 8 * 8
    words = diff[:n8].view(np.uint64)
    hit = np.flatnonzero(words != 0)
    inner = np.flatnonzero(words[hit].view(np.bool_))
    out = hit[inner >> 3] * 8 + (inner & 7)
    if n8 < diff.size:
        out = np.concatenate((out, np.flatnonzero(diff[n8:]) + n8))
    return out


def encode_rle(values: np.ndarray) -> list[int]:
    """Any 1-D array of 8-bit values -> RLE, byte-identical to the SDK's ``encode_rle``."""
    flat = np.asarray(values).ravel()
    if flat.size and (flat.min() < 0 or flat.max() > 255):
        raise ValueError("RLE values must be 0-255")
    if flat.size == 0:
        return _pack(0, np.zeros(0, np.int64), np.zeros(0, np.int64))
    starts = np.concatenate(([0], _changes(flat) + 1))
    lengths, run_values = np.diff(np.append(starts, flat.size)), flat[starts]
    return _pack(flat.size, lengths, run_values)


def mask_to_rle(mask: np.ndarray) -> list[int]:
    """``H x W`` mask (nonzero = inside) -> Label Studio brush RLE.

    Byte-identical to ``label_studio_sdk.converter.brush.mask2rle`` of the 0/255 ``uint8`` mask:
    each pixel becomes four equal RGBA bytes, so runs are found on pixels and multiplied by 4.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (height x width), got shape {mask.shape}")
    flat = mask.ravel()
    if flat.size == 0:
        return _pack(0, np.zeros(0, np.int64), np.zeros(0, np.int64))
    # Changes of value are found on the raw bytes (no "!= 0" pass over every pixel first); where a
    # mask has several nonzero values, the changes between two of them are dropped afterwards.
    changes = _changes(flat.view(np.uint8) if flat.dtype == bool else flat)
    if flat.dtype != bool and changes.size:
        inside = flat[changes + 1] != 0  # of the run after each change
        keep = np.empty_like(inside)
        keep[0] = inside[0] != (flat[0] != 0)
        np.not_equal(inside[1:], inside[:-1], out=keep[1:])
        if not keep.all():
            changes = changes[keep]
    # Runs of a two-valued array alternate: only the first run's value needs reading.
    ends = np.empty(changes.size + 1, np.int64)
    ends[:-1] = changes + 1
    ends[-1] = flat.size
    lengths = np.diff(ends, prepend=0)
    lengths *= 4
    values = np.full(len(ends), 255 if flat[0] else 0, dtype=np.int64)
    values[1::2] ^= 255
    return _pack(flat.size * 4, lengths, values)


def _read_words(buf: np.ndarray, positions: np.ndarray, word_size: int) -> np.ndarray:
    """The ``word_size``-bit words (<= 8) that start at the given bit positions of ``buf``."""
    byte = positions >> 3
    window = (buf[byte].astype(np.uint32) << 16) | (buf[byte + 1].astype(np.uint32) << 8) | buf[byte + 2]
    shift = (24 - word_size - (positions & 7)).astype(np.uint32)
    return ((window >> shift) & ((1 << word_size) - 1)).astype(np.uint8)


def decode_rle(rle: Sequence[int] | np.ndarray) -> np.ndarray:
    """RLE -> the flat ``uint8`` array it encodes (what the SDK's ``decode_rle`` returns).

    Tokens are walked in Python (each token's length depends on the one before), but values
    are never touched one at a time: runs are expanded with ``np.repeat``. A Label Studio mask
    has a few thousand tokens, so this takes milliseconds where the SDK takes seconds.
    Raises :class:`ValueError` for a stream that is truncated or claims more values than it has.
    """
    arr = np.asarray(rle)
    if arr.ndim != 1 or (arr.size and (arr.dtype.kind not in "iu" or arr.min() < 0 or arr.max() > 255)):
        raise ValueError("RLE must be a flat list of integers 0-255")
    data = arr.astype(np.uint8).tobytes()
    total_bits = len(data) * 8
    if total_bits < HEADER_BITS:
        raise ValueError(f"RLE of {len(data)} bytes is shorter than its {HEADER_BITS}-bit header")
    padded = data + b"\0\0\0\0"
    head = int.from_bytes(data[:7], "big") >> (56 - HEADER_BITS)
    sizes = [((head >> (12 - 4 * k)) & 15) + 1 for k in range(4)]
    word_size = ((head >> 16) & 31) + 1
    num = head >> 21
    if word_size > 8:
        raise ValueError(f"RLE word size {word_size} is not supported (Label Studio brush masks use 8)")

    is_repeat: list[bool] = []
    value_pos: list[int] = []
    counts: list[int] = []
    pos, i = HEADER_BITS, 0
    while i < num:
        if pos + 3 > total_bits:
            raise ValueError(f"RLE is truncated: {i:,} of {num:,} values decoded")
        word = (int.from_bytes(padded[pos >> 3 : (pos >> 3) + 4], "big") << (pos & 7)) & 0xFFFFFFFF
        size = sizes[(word >> 29) & 3]
        count = ((word >> (29 - size)) & ((1 << size) - 1)) + 1
        repeat = bool(word >> 31)
        pos += 3 + size
        is_repeat.append(repeat)
        value_pos.append(pos)
        counts.append(count)
        pos += word_size if repeat else count * word_size
        i += count
        if pos > total_bits:
            raise ValueError(f"RLE is truncated: {min(i, num):,} of {num:,} values decoded")
    if i > num:
        raise ValueError(f"RLE holds {i:,} values but its header says {num:,}")

    rep = np.asarray(is_repeat, dtype=bool)
    start = np.asarray(value_pos, dtype=np.int64)
    count_arr = np.asarray(counts, dtype=np.int64)
    # One segment per repeat token, one per value of a literal token.
    segments = np.where(rep, 1, count_arr)
    token = np.repeat(np.arange(len(segments)), segments)
    offset = np.arange(len(token)) - np.repeat(np.cumsum(segments) - segments, segments)
    seg_values = _read_words(np.frombuffer(padded, np.uint8), start[token] + offset * word_size, word_size)
    return np.repeat(seg_values, np.where(rep[token], count_arr[token], 1))


def rle_to_mask(rle: Sequence[int] | np.ndarray, height: int, width: int) -> np.ndarray:
    """Brush RLE -> ``height x width`` ``uint8`` mask: the alpha channel of the encoded RGBA image.

    That is what ``label_studio_sdk.converter.brush.decode_from_annotation`` returns and what
    Label Studio paints (it draws every pixel whose alpha is nonzero). Masks from
    :func:`mask_to_rle` are exactly 0/255; masks painted in Label Studio are 0/255 except
    possibly for anti-aliased stroke edges, so threshold as the use requires.
    """
    flat = decode_rle(rle)
    if flat.size != height * width * 4:
        raise ValueError(
            f"RLE holds {flat.size:,} values but a {width}x{height} RGBA image has {height * width * 4:,}; "
            "original_width/original_height do not match this mask"
        )
    return np.ascontiguousarray(flat[3::4].reshape(height, width))
