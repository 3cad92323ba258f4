"""Is a compressed COCO RLE string well formed? Checked for all masks at once, in numpy.

pycocotools decodes whatever it is given: a string that ends mid-number is read
past its end, a negative run or runs that do not add up to height*width give a
mask that silently scores the wrong IoU. Its decoder is in C and does not say
which, so this re-implements its format (maskApi.c, rleFrString) vectorised:
each number is 1..6 characters of 5 bits ('0' + value), bit 0x20 meaning "more
follows", bit 0x10 of the last one the sign; from the third number on, each
is a delta to the number two places before it.
"""
from typing import Optional, Sequence, Tuple

import numpy as np

_LOW = ord("0")
# Six characters hold 30 bits; more would overflow pycocotools' 32-bit shift, and no
# image has 2**29 pixels.
_MAX_CHARS_PER_NUMBER = 6
_CHUNK_CHARS = 1 << 17  # measured fastest: the dozen temporaries of this size stay in the CPU's cache


def first_bad_rle_string(strings: Sequence[str], pixels: Sequence[int]) -> Optional[Tuple[int, str]]:
    """(index, why) of the first string whose runs are not a valid mask of pixels[i] pixels, or None."""
    lengths = np.fromiter(map(len, strings), dtype=np.int64, count=len(strings))
    pixels = np.asarray(pixels, dtype=np.int64)
    # Chunks of about _CHUNK_CHARS characters (at least one string each): the
    # temporaries stay in cache, and a string's characters stay in one chunk.
    ends = np.cumsum(lengths)
    marks = np.arange(0, int(ends[-1]) if len(ends) else 0, _CHUNK_CHARS)
    bounds = np.union1d(np.searchsorted(ends, marks, side="right"), [0, len(strings)]).tolist()
    for start, stop in zip(bounds[:-1], bounds[1:]):
        bad = _check_chunk(strings[start:stop], lengths[start:stop], pixels[start:stop])
        if bad is not None:
            return start + bad[0], bad[1]
    return None


def _check_chunk(strings: Sequence[str], lengths: np.ndarray, pixels: np.ndarray) -> Optional[Tuple[int, str]]:
    ends = np.cumsum(lengths)
    holding = lambda pos: int(np.searchsorted(ends, pos, side="right"))  # noqa: E731 - the string with char pos
    joined = "".join(strings)
    try:
        c = np.frombuffer(joined.encode("ascii"), dtype=np.uint8) - np.uint8(_LOW)  # below '0' wraps above 63
    except UnicodeEncodeError as e:
        return holding(e.start), f"character {joined[e.start]!r} is not one of '0'..'o'"
    if c.size and c.max() > 63:
        pos = int(np.argmax(c > 63))
        return holding(pos), f"character {joined[pos]!r} is not one of '0'..'o'"
    last = c < 0x20  # bit 0x20 clear: the last character of a number
    nonempty = np.flatnonzero(lengths)
    cut = nonempty[~last[ends[nonempty] - 1]]
    if cut.size:
        return int(cut[0]), "it ends in the middle of a number"
    # One-character numbers: 5 bits, the top one the sign (shifted into int8's sign bit
    # and back); longer ones are completed below.
    x = ((c[last] << 3).view(np.int8) >> 3).astype(np.int32)
    more = np.flatnonzero(~last)
    if more.size:
        # A character is in the number whose index is how many numbers ended before it.
        too_long = _add_longer_numbers(x, c, more, more - np.arange(more.size))
        if too_long is not None:
            return holding(too_long), "a number is too long for a run length"
    vend = np.flatnonzero(last)
    first, stop = np.searchsorted(vend, ends - lengths), np.searchsorted(vend, ends)  # numbers first..stop-1

    # Run m of a string is x[m], plus run m-2 from m = 3 on: running sums along every
    # second number. `chain` has them for the whole chunk (int32 wrapping as
    # pycocotools' uint32 does); a string's runs subtract the chain's value just
    # before the string, at the index of the same parity.
    count = stop - first
    chain = np.zeros(x.size + 2, dtype=np.int32)  # chain[i + 2] = x[i] + x[i-2] + ...
    np.cumsum(x[0::2], dtype=np.int32, out=chain[2::2])
    np.cumsum(x[1::2], dtype=np.int32, out=chain[3::2])
    # Of first-1 and first, the one of each parity, as an index into chain (+2).
    at_even = first + 2 - (first & 1)
    at_odd = first + 1 + (first & 1)
    runs = np.empty_like(x)
    runs[0::2] = chain[2::2] - np.repeat(chain[np.minimum(at_even, x.size + 1)], count)[0::2]
    runs[1::2] = chain[3::2] - np.repeat(chain[np.minimum(at_odd, x.size + 1)], count)[1::2]
    heads = first[count > 0]
    runs[heads] = x[heads]
    if runs.size and runs.min() < 0:
        number = int(np.argmax(runs < 0))
        return int(np.searchsorted(stop, number, side="right")), "it has a negative run length"
    covered = np.zeros(len(strings), dtype=np.int64)
    covered[count > 0] = np.add.reduceat(runs, heads, dtype=np.int64) if heads.size else 0
    wrong = np.flatnonzero(covered != pixels)
    if wrong.size:
        i = int(wrong[0])
        return i, f"its runs cover {covered[i]} pixels, not height*width = {pixels[i]}"
    return None


def _add_longer_numbers(x: np.ndarray, c: np.ndarray, more: np.ndarray, number: np.ndarray) -> Optional[int]:
    """Complete x for numbers of several characters (rare: most runs change little from
    two runs before); `more` are their leading characters' positions and `number` their
    numbers. Returns the position of a number with too many characters, if any."""
    starts = np.flatnonzero(np.diff(more, prepend=-2) != 1)  # each number's leading run of `more`
    k = np.arange(more.size) - np.repeat(starts, np.diff(starts, append=more.size))
    if k.max() + 2 > _MAX_CHARS_PER_NUMBER:
        return int(more[np.argmax(k + 2 > _MAX_CHARS_PER_NUMBER)])
    low = np.add.reduceat((c[more] & 0x1F).astype(np.int64) << (5 * k), starts)
    n = number[starts]
    nchars = np.diff(starts, append=more.size) + 1
    x[n] = low + (x[n].astype(np.int64) << (5 * (nchars - 1)))  # x[n] held the signed last character
    return None
