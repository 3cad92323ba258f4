"""Masks pasted and RLE-encoded where they can be nonzero only: inside each detection's box.

torchvision's paste_masks_in_image (run by the model's transform.postprocess)
builds one float image per detection: 100 detections of a 640x480 image are
123 MB, which encode_masks then thresholds, transposes and scans, whole, once
more. Everything outside a detection's (expanded, clipped) box is zero, so here
the model hands over its 28x28 mask probabilities ("mask_probs", with
"image_size") and the evaluator

  paste_mask_crops   resizes each one exactly as torchvision does (the same
                     F.interpolate call on the same padded mask and integer box,
                     so the same floats) and keeps the part inside the image;
  threshold_crops    keeps pixels >= MASK_THRESHOLD;
  encode_mask_crops  writes the COCO RLE strings of the full-image masks, for all
                     of an image's detections at once in numpy: runs are found
                     only inside the crops, then compressed as pycocotools'
                     rleToString does.

The RLEs are byte for byte those of mask_util.encode on the full-image masks
(tests/test_mask_crops.py compares them).
"""
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.models.detection.roi_heads import expand_boxes, expand_masks

MASK_THRESHOLD = 0.5  # conversion.MASK_THRESHOLD; here too so that this module imports nothing of ours

# rleToString writes each number in 5-bit groups, as many as its two's complement
# needs: k groups hold magnitudes (x, or -x-1 if negative) below 2**(5k-1). Runs of an
# image of up to 2**31 pixels, and their differences, fit in 7.
_GROUP_LIMITS = np.array([1 << (5 * k - 1) for k in range(1, 8)], dtype=np.int64)

__all__ = ["paste_mask_crops", "threshold_crops", "encode_mask_crops", "mask_probs_to_rles"]


def paste_mask_crops(mask_probs: torch.Tensor, boxes: torch.Tensor, image_size: Sequence[int]) -> Tuple[List[torch.Tensor], np.ndarray]:
    """torchvision's paste_masks_in_image, kept to the pixels it can write.

    mask_probs: (N, 1, M, M) or (N, M, M) probabilities; boxes: (N, 4) xyxy in the
    image's pixels; image_size: (height, width). Returns `crops`, 2-D float views
    (on the masks' device), and `regions`, an (N, 4) int64 array of [x0, y0, x1, y1]:
    the full-image mask i is zero but for rows y0:y1 and columns x0:x1, which hold
    the next crop; a mask with x1 <= x0 or y1 <= y0 (its box off the image) is all
    zero and has no crop.
    """
    if mask_probs.dim() == 3:
        mask_probs = mask_probs[:, None]
    n = int(mask_probs.shape[0])
    im_h, im_w = int(image_size[0]), int(image_size[1])
    if n == 0:
        return [], np.zeros((0, 4), dtype=np.int64)
    # The same two torchvision calls as paste_masks_in_image: the same padded masks and integer boxes.
    padded, scale = expand_masks(mask_probs, padding=1)
    int_boxes = expand_boxes(boxes, scale).to(dtype=torch.int64).tolist()
    crops, regions = [], []
    for mask, (bx0, by0, bx1, by1) in zip(padded[:, 0], int_boxes):
        x0, x1 = max(bx0, 0), min(bx1 + 1, im_w)
        y0, y1 = max(by0, 0), min(by1 + 1, im_h)
        if x1 <= x0 or y1 <= y0:  # off the image: nothing to paste (torchvision pastes nothing or fails)
            regions.append((0, 0, 0, 0))
            continue
        w, h = max(bx1 - bx0 + 1, 1), max(by1 - by0 + 1, 1)
        resized = F.interpolate(mask.expand((1, 1, -1, -1)), size=(h, w), mode="bilinear", align_corners=False)
        crops.append(resized[0, 0, y0 - by0:y1 - by0, x0 - bx0:x1 - bx0])
        regions.append((x0, y0, x1, y1))
    return crops, np.asarray(regions, dtype=np.int64).reshape(n, 4)


def threshold_crops(crops: Sequence[torch.Tensor]) -> List[np.ndarray]:
    """Each crop's pixels kept (>= MASK_THRESHOLD), as 2-D bool numpy arrays on the host:
    on the CPU one numpy comparison per crop, on a GPU one for all and one copy."""
    if not crops:
        return []
    if crops[0].device.type == "cpu":
        return [crop.numpy() >= MASK_THRESHOLD for crop in crops]
    return _threshold_on_device(crops)


def _threshold_on_device(crops: Sequence[torch.Tensor]) -> List[np.ndarray]:
    bits = (torch.cat([crop.reshape(-1) for crop in crops]) >= MASK_THRESHOLD).cpu().numpy()
    out, start = [], 0
    for crop in crops:
        h, w = crop.shape
        out.append(bits[start:start + h * w].reshape(h, w))
        start += h * w
    return out


def encode_mask_crops(crop_bits: Sequence[np.ndarray], regions: np.ndarray, image_size: Sequence[int]) -> List[Dict]:
    """COCO RLEs {"size": [h, w], "counts": str} of full-image masks given by their crops.

    crop_bits: the thresholded crops (threshold_crops), one per mask with a
    nonempty region, in order; regions: (N, 4) [x0, y0, x1, y1] (paste_mask_crops).
    The strings are mask_util.encode's, byte for byte.
    """
    im_h, im_w = int(image_size[0]), int(image_size[1])
    n = len(regions)
    if n == 0:
        return []
    regions = np.asarray(regions, dtype=np.int64).reshape(n, 4)
    x0, y0, x1, y1 = regions.T
    cw, ch = np.maximum(x1 - x0, 0), np.maximum(y1 - y0, 0)
    ch[cw == 0] = 0
    cw[ch == 0] = 0
    nonempty = np.flatnonzero(cw).tolist()
    if len(nonempty) != len(crop_bits):
        raise ValueError(f"{len(crop_bits)} crops for {len(nonempty)} nonempty regions")
    # A mask, read in COCO's column-major order, is zero but for its crop's columns,
    # each a "segment" of the scan with zeros after it; a crop of the image's full
    # height is one segment. Each mask's segments go into `stream`, each followed by
    # one 0 (then a run of 1s that reaches a segment's end ends there); a mask's
    # stream starts after another's trailing 0 (or the leading 0), as its first
    # pixel follows a 0 in the image.
    full_height = ch == im_h
    seg_len = np.where(full_height, ch * cw, ch)
    n_seg = np.where(full_height, (cw > 0).astype(np.int64), cw)
    stream_len = n_seg * (seg_len + 1)
    stream_start = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(stream_len, out=stream_start[1:])
    stream = np.zeros(1 + int(stream_start[-1]), dtype=bool)
    body = stream[1:]
    for i, bits in zip(nonempty, crop_bits):  # one strided copy per mask: its crop, transposed, into its segments
        h, w, s = int(ch[i]), int(cw[i]), int(stream_start[i])
        if bits.shape != (h, w):
            raise ValueError(f"crop {i} is {tuple(bits.shape)}, its region {h}x{w}")
        if full_height[i]:
            body[s:s + h * w].reshape(w, h)[...] = bits.T
        else:
            body[s:s + w * (h + 1)].reshape(w, h + 1)[:, :h] = bits.T
    # A run starts wherever the stream changes; p is its position in `body`, which
    # maps back to the image's pixel index (column-major) through its mask's segment.
    p = np.flatnonzero(stream[1:] != stream[:-1])
    mask_of = np.searchsorted(stream_start, p, side="right") - 1
    offset = p - stream_start[mask_of]
    period = seg_len[mask_of] + 1
    pixel = (x0 * im_h + y0)[mask_of] + (offset // period) * im_h + offset % period
    keep = pixel < im_h * im_w  # a run of 1s that reaches the image's last pixel ends with the image
    pixel, mask_of = pixel[keep], mask_of[keep]

    # counts of mask i: its change pixels' differences, from 0, then what is left to h*w.
    n_changes = np.bincount(mask_of, minlength=n)
    n_counts = n_changes + 1
    count_start = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(n_counts, out=count_start[1:])
    counts = np.empty(int(count_start[-1]), dtype=np.int64)
    first_change = count_start[:-1] - np.arange(n)  # index in `pixel` of each mask's first change
    at = np.arange(pixel.size) + mask_of  # each change's slot in `counts`
    previous = np.empty_like(pixel)
    previous[1:] = pixel[:-1]
    is_first = np.zeros(pixel.size, dtype=bool)
    is_first[first_change[n_changes > 0]] = True
    previous[is_first] = 0
    counts[at] = pixel - previous
    last = count_start[1:] - 1
    last_pixel = np.zeros(n, dtype=np.int64)
    has = n_changes > 0
    last_pixel[has] = pixel[first_change[has] + n_changes[has] - 1]
    counts[last] = im_h * im_w - last_pixel
    index = np.arange(counts.size) - np.repeat(count_start[:-1], n_counts)
    text, ends = _rle_strings(counts, index, count_start)
    size = [im_h, im_w]
    starts = [0] + ends[:-1]
    return [{"size": list(size), "counts": text[a:b]} for a, b in zip(starts, ends)]


def _rle_strings(counts: np.ndarray, index: np.ndarray, count_start: np.ndarray) -> Tuple[str, List[int]]:
    """pycocotools' rleToString for many RLEs at once: their strings joined, and where each ends.

    counts: all RLEs' runs one after the other; index: each run's index in its RLE;
    count_start: where each RLE starts in counts (and, last, counts' length). From
    its fourth run on, a number is written as the difference to the run two before;
    each number is 5-bit groups, low first, 48 added and 0x20 set on all but the
    last: as few groups as hold it in two's complement.
    """
    x = counts.copy()
    delta = np.flatnonzero(index > 2)
    x[delta] -= counts[delta - 2]
    magnitude = np.where(x < 0, ~x, x)  # a k-group number holds -2**(5k-1) .. 2**(5k-1) - 1
    if magnitude.size and magnitude.max() >= _GROUP_LIMITS[-1]:
        raise ValueError("a run length too large for a COCO RLE")
    n_chars = 1 + np.searchsorted(_GROUP_LIMITS[:-1], magnitude, side="right")
    char_end = np.cumsum(n_chars)
    number = np.repeat(np.arange(x.size), n_chars)
    group = np.arange(number.size) - np.repeat(char_end - n_chars, n_chars)
    chars = (x[number] >> (5 * group)) & 0x1F
    chars |= (group < (n_chars - 1)[number]) << 5
    text = (chars + 48).astype(np.uint8).tobytes().decode("ascii")
    return text, char_end[count_start[1:] - 1].tolist()


def mask_probs_to_rles(mask_probs: torch.Tensor, boxes: torch.Tensor, image_size: Sequence[int]) -> List[Dict]:
    """The three steps: the RLEs of torchvision's pasted masks, thresholded at MASK_THRESHOLD."""
    crops, regions = paste_mask_crops(mask_probs, boxes, image_size)
    return encode_mask_crops(threshold_crops(crops), regions, image_size)
