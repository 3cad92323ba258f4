"""How far outside its image a polygon point may lie: one rule for training, ground-truth and results json.

The rule: within m = max(width, height, 1000) px of the image, x in [-m, width + m] and
y in [-m, height + m]. Why bound at all: pycocotools rasterises a polygon (maskApi.c, rleFrPoly)
in C ints at 5 steps per pixel of its outline, 8 bytes a step, and does not check the malloc.
A point at 1e8 px asks for ~16 GB and ~40 s; past 4.3e8 px the int overflows; either way the
process can die by SIGSEGV, which no Python code can catch or name. Inside the bound an edge is
at most 3 image sizes (or the image + 2000 px) long: kilobytes to rasterise. Why this generous:
real annotations stray outside -- COCO has points a pixel or two past the border, and objects
wholly off the image are dropped with a warning (data/coco.py) -- and that must keep working,
even around a thumbnail; no real annotation is millions of pixels away.
"""
import numpy as np

__all__ = ["MIN_MARGIN", "margin", "first_polygon_outside", "point_outside", "polygon_bound_fix"]

MIN_MARGIN = 1000  # px; see above


def margin(width, height):
    """How far (px) beyond each edge of a width x height image a polygon point may lie."""
    return np.maximum(np.maximum(width, height), MIN_MARGIN)


def _inside(x, y, w, h, m):
    # Written as "inside", to be negated, so that NaN is outside.
    return (x >= -m) & (x <= w + m) & (y >= -m) & (y <= h + m)


def first_polygon_outside(coords, lengths, widths, heights):
    """(k, x, y): the first polygon k with a point (x, y) outside the bound of its image, or None.

    coords: every polygon's x1, y1, x2, y2, ... one after the other (float64); lengths: the
    numbers in each polygon (even); widths, heights: each polygon's image size. NaN and inf
    count as outside. COCO train's 40M coordinates take ~0.15 s (0.5 s where the quick pass cannot tell).
    """
    lengths = np.asarray(lengths, np.int64)
    points = lengths // 2
    has = np.flatnonzero(points)
    if not len(has):
        return None
    w, h = np.asarray(widths, np.float64)[has], np.asarray(heights, np.float64)[has]
    m = margin(w, h)
    # Every bound holds [-min(m), min(m)]: where all coordinates do (NaN does not), two passes suffice.
    if coords.min() >= -m.min() and coords.max() <= m.min():
        return None
    xs, ys = coords[0::2], coords[1::2]
    starts = (np.cumsum(points) - points)[has]
    inside = (_inside(np.minimum.reduceat(xs, starts), np.minimum.reduceat(ys, starts), w, h, m)
              & _inside(np.maximum.reduceat(xs, starts), np.maximum.reduceat(ys, starts), w, h, m))
    if inside.all():
        return None
    j = int(np.argmin(inside))
    begin, end = int(starts[j]), int(starts[j] + points[has[j]])
    p = int(np.argmin(_inside(xs[begin:end], ys[begin:end], w[j], h[j], m[j])))
    return int(has[j]), float(xs[begin + p]), float(ys[begin + p])


def point_outside(x, y, width, height):
    """'point (x, y) far outside its WxH image', for messages."""
    return f"point ({x:.10g}, {y:.10g}) far outside its {int(width)}x{int(height)} image"


def polygon_bound_fix(width, height):
    """What to do about a point outside the bound, for messages."""
    w, h, m = int(width), int(height), int(margin(width, height))
    return (f"polygon points must lie within {m} px of the image (x in [{-m}, {w + m}], y in [{-m}, {h + m}] "
            "here): fix the coordinates (pixels of this image) or remove the polygon")
