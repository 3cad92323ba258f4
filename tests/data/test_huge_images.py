"""Images far larger than training's input are read shrunk: the full-size pixels and masks never
exist as float32 (an 8000x8000 photo trained at 96 px took 4.3 GB for 4 iterations)."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_util

from conftest import REPO
from zenith_det.data.coco import SHRINK_HEADROOM, CocoDetection, shrink_factor


def _write(tmp_path, width, height, exif_orientation=None, fmt="JPEG", json_upright=False):
    image = Image.new("RGB", (width, height), (20, 40, 60))
    pixels = image.load()
    for x in range(width // 4, width // 2):  # a red square, a quarter of the side
        for y in range(height // 4, height // 2):
            pixels[x, y] = (230, 10, 10)
    name = "big.jpg" if fmt == "JPEG" else "big.png"
    kwargs = {}
    if exif_orientation:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kwargs["exif"] = exif.tobytes()
    image.save(tmp_path / name, fmt, **kwargs)
    if json_upright:
        width, height = height, width
    x0, y0, x1, y1 = width / 4, height / 4, width / 2, height / 2
    polygon = [x0, y0, x1, y0, x1, y1, x0, y1]
    rle = mask_util.encode(np.asfortranarray(_box(height, width, x0, y0, x1, y1)))
    rle["counts"] = rle["counts"].decode()
    data = {
        "images": [{"id": 1, "file_name": name, "width": width, "height": height}],
        "categories": [{"id": 1, "name": "square"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0),
             "iscrowd": 0, "segmentation": [polygon]},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0),
             "iscrowd": 0, "segmentation": rle},
        ],
    }
    (tmp_path / "big.json").write_text(json.dumps(data))
    return str(tmp_path / "big.json"), str(tmp_path)


def _box(h, w, x0, y0, x1, y1):
    mask = np.zeros((h, w), dtype=np.uint8)
    mask[int(y0):int(y1), int(x0):int(x1)] = 1
    return mask


def test_images_within_the_headroom_are_read_at_full_size():
    assert shrink_factor(640, 480, (800, 1333)) == 1.0
    assert shrink_factor(640, 480, None) == 1.0
    # 4000 px wide at a 1333 px long side: shrunk 3-fold by the model, more than the headroom
    assert shrink_factor(4000, 3000, (800, 1333)) == pytest.approx(SHRINK_HEADROOM * min(800 / 3000, 1333 / 4000))


@pytest.mark.parametrize("fmt, orientation, json_upright", [("JPEG", None, False), ("PNG", None, False),
                                                            ("JPEG", 6, False), ("JPEG", 6, True)])
def test_a_huge_image_and_its_targets_are_read_shrunk_and_agree(tmp_path, fmt, orientation, json_upright):
    """EXIF orientation 6 stores the pixels sideways: the json may describe them raw or upright."""
    json_file, root = _write(tmp_path, 1600, 1200, orientation, fmt, json_upright)
    width, height = (1200, 1600) if json_upright else (1600, 1200)
    shrunk = CocoDetection(json_file, root, with_masks=True, largest_input=(96, 128))
    full = CocoDetection(json_file, root, with_masks=True)
    image, target = shrunk[0]
    scale = SHRINK_HEADROOM * 96 / min(width, height)
    size = (round(width * scale), round(height * scale))
    assert tuple(image.shape) == (3, size[1], size[0]) and image.dtype == torch.float32
    big_image, big_target = full[0]
    # The image: what a resize of the full-size one gives, within JPEG's and resampling's error at the
    # square's edges (interior pixels agree to a few levels of 255).
    resized = torch.nn.functional.interpolate(big_image[None], size=(size[1], size[0]), mode="area")[0]
    assert (image - resized).abs().mean() < 0.02
    sx, sy = size[0] / width, size[1] / height
    assert torch.allclose(target["boxes"], big_target["boxes"] * torch.tensor([sx, sy, sx, sy]), rtol=1e-6)
    assert torch.allclose(target["area"], big_target["area"] * (sx * sy), rtol=1e-6)
    assert tuple(target["masks"].shape) == (2, size[1], size[0])
    expected = torch.nn.functional.interpolate(big_target["masks"][None].float(), size=(size[1], size[0]),
                                               mode="nearest")[0].round().to(torch.uint8)
    for got, want in zip(target["masks"], expected):  # polygon drawn at the small size; RLE resized
        iou = (got & want).sum() / (got | want).sum()
        assert iou > 0.9


def test_a_huge_image_whose_json_size_is_wrong_is_still_refused(tmp_path):
    json_file, root = _write(tmp_path, 1600, 1200)
    data = json.load(open(json_file))
    data["images"][0]["width"] = 1500
    data["annotations"] = data["annotations"][:1]  # the polygon: an RLE's size would be refused first
    json.dump(data, open(json_file, "w"))
    dataset = CocoDetection(json_file, root, with_masks=True, largest_input=(96, 128))
    with pytest.raises(Exception, match="1600x1200 but its json entry says 1500x1200"):
        dataset[0]


@pytest.mark.slow
@pytest.mark.parametrize("size", [96, 8000])
def test_an_8000_pixel_image_is_read_without_its_full_size_in_memory(tmp_path, size):
    """Peak memory of one training sample of an 8000x8000 JPEG with 2 masks, at a 96 px input, in a
    fresh process: the float32 image alone would be 768 MB and each full-size mask 64 MB. At an
    8000 px input (no shrinking) the same measurement shows them, so it can fail."""
    json_file, root = _write(tmp_path, 8000, 8000)
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {REPO!r})
        from zenith_det.data.coco import CocoDetection

        def kb(field):
            return int(next(l for l in open("/proc/self/status") if l.startswith(field)).split()[1])

        dataset = CocoDetection({json_file!r}, {root!r}, with_masks=True, largest_input=({size}, {size}))
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # the peak (VmHWM) starts again from the current RSS
        before = kb("VmRSS:")
        image, target = dataset[0]
        print(tuple(image.shape), tuple(target["masks"].shape), (kb("VmHWM:") - before) // 1024)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-2000:]
    grown_mb = int(result.stdout.split()[-1])
    print("peak RSS growth, MB:", grown_mb, result.stdout)
    if size == 8000:  # the same sample unshrunk: the measurement sees the full-size float32 image
        assert grown_mb > 768, result.stdout
        return
    assert result.stdout.startswith("(3, 192, 192) (2, 192, 192)"), result.stdout
    # The RLE mask is decoded at full size once (64 MB of uint8), then resized; the JPEG at 1/8 scale.
    assert grown_mb < 200, result.stdout
