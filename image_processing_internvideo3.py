"""InternVideo3 image processing: image loading, resizing, and the patch layout of images and video frames (SPEC §6-7).

`InternVideo3ImageProcessor` is more than transformers' PIL Qwen2-VL image processor configured: it takes the
inputs the processor takes (paths, URLs, data URLs, PIL, arrays in either layout, RGBA composited on white), uses
the processor's merged settings (item < call < processor bounds, `vision_settings_internvideo3`), and writes rows
with `PatchWriter`, which the video processor shares, straight into one preallocated float32 tensor. Its
`pixel_values` equal transformers' PIL Qwen2-VL image processor's bit for bit (tests/test_fidelity.py).

    image --load_image (RGB)--> --resize (PIL bicubic) to multiples of 32 within [min_pixels, max_pixels]-->
          --(x - 127.5) / 127.5, patchify--> pixel_values [grid_h * grid_w, 1536] float32, image_grid_thw (1, h, w)
"""

from __future__ import annotations

import ctypes
import math
import mmap
import os
import re
import sys
import threading
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor

# Flat sibling modules: in a Hub folder they form a generated package, of which transformers copies the siblings
# named in a module's `from .name import` lines (4.57: only those of the module it loads, so each entry module
# names every sibling it needs that way); in a checkout or an installed package they are top-level modules.
try:
    from .configuration_internvideo3 import numeric_range  # noqa: F401 - copies vision_settings' sibling (4.57)
    from .vision_settings_internvideo3 import VisionSettings
    from . import vision_settings_internvideo3 as vision_settings
except ImportError:
    from vision_settings_internvideo3 import VisionSettings
    import vision_settings_internvideo3 as vision_settings

__all__ = ["InternVideo3ImageProcessor", "PatchWriter", "as_frames", "load_image", "resize_frames"]

RESIZE_BACKENDS = ("pil", "torch")


def as_frames(video) -> torch.Tensor:
    """An in-memory video -> tensor [T, 3, H, W], keeping the dtype (uint8, or float32/float64 0-255 values such as
    qwen-vl-utils' frames; other dtypes become float32). Accepts an array/tensor [T, H, W, C] or [T, C, H, W] with C
    in 1 (grey, repeated), 3, 4 (RGBA, composited on white), or a list of frames (paths/URLs, PIL images, arrays
    [H, W, C], [C, H, W] or [H, W]); frames of a list are resized to the first one's size.

    Raises:
        ValueError: an array that is not 4-D.
    """
    if isinstance(video, (list, tuple)):
        frames = [as_frames(_frame_batch(frame)) for frame in video]
        if len({f.dtype for f in frames}) > 1:
            frames = [f.to(torch.float32) for f in frames]
        return torch.cat([resize_frames(f, frames[0].shape[-2:]) for f in frames])
    tensor = video if isinstance(video, torch.Tensor) else torch.from_numpy(np.asarray(video))
    if tensor.ndim != 4:
        raise ValueError(f"a video must be 4-D [T, H, W, C] or [T, C, H, W], got shape {tuple(tensor.shape)}")
    if tensor.shape[1] not in (1, 3, 4) and tensor.shape[-1] in (1, 3, 4):
        tensor = tensor.permute(0, 3, 1, 2)
    if tensor.dtype not in (torch.uint8, torch.float32, torch.float64):
        tensor = tensor.to(torch.float32)
    if tensor.shape[1] == 1:
        tensor = tensor.expand(-1, 3, -1, -1)
    elif tensor.shape[1] == 4:  # composited on white, as `_to_rgb` does for PIL images
        rgb, alpha = tensor[:, :3].to(torch.float32), tensor[:, 3:].to(torch.float32) / 255.0
        tensor = (rgb * alpha + 255.0 * (1.0 - alpha)).round().clamp(0, 255).to(torch.uint8)
    return tensor


def _frame_batch(frame):
    """One frame (path/URL, PIL image, array/tensor [H, W, C], [C, H, W] or [H, W]) -> a one-frame 4-D batch."""
    if isinstance(frame, (str, os.PathLike)):
        frame = load_image(frame)
    if isinstance(frame, Image.Image):
        frame = np.array(_to_rgb(frame))
    tensor = frame if isinstance(frame, torch.Tensor) else torch.from_numpy(np.asarray(frame))
    if tensor.ndim == 2:
        tensor = tensor[None]
    if tensor.ndim != 3:
        raise ValueError(f"an image or video frame must be 2-D or 3-D, got shape {tuple(tensor.shape)}")
    return tensor[None]


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with transparency composited on white (as transformers' `convert_to_rgb` and qwen-vl-utils)."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(source) -> Image.Image:
    """Open an image (path, `file://` / http(s) URL, base64 data URL, PIL image) as an RGB PIL image.

    Raises:
        FileNotFoundError: a local path that does not exist.
        ValueError: the data is not an image.
    """
    if isinstance(source, Image.Image):
        return _to_rgb(source)
    source = os.fspath(source)
    if source.startswith("file://"):
        source = source[len("file://") :]
    if not re.match(r"^(https?://|data:)", source) and not os.path.exists(source):
        raise FileNotFoundError(f"image file not found: {source!r}")
    from transformers.image_utils import load_image as hf_load_image  # noqa: PLC0415

    try:
        image = hf_load_image(source)
    except Exception as error:
        raise ValueError(f"cannot open image {source!r}: {error}") from error
    return _to_rgb(image)


# ---------------------------------------------------------------------------------------------------------------
# Pixel processing (SPEC §6-7)
# ---------------------------------------------------------------------------------------------------------------
def resize_frames(frames: torch.Tensor, size: tuple[int, int], backend: str = "torch") -> torch.Tensor:
    """Bicubic, antialiased resize of frames [T, C, H, W] to `size` = (height, width) pixels.

    backend "torch": `torch.nn.functional.interpolate(..., mode="bicubic", antialias=True)` on the input dtype -
    exactly what torchvision's `resize` runs on CPU (native uint8 kernel for uint8, float kernel for floats), hence
    what transformers' `Qwen3VLVideoProcessor`, its fast image processors and qwen-vl-utils produce.
    backend "pil": PIL `Image.resize(..., BICUBIC)` per frame (uint8 only), as transformers' PIL/slow Qwen2-VL image
    processor and qwen-vl-utils' `fetch_image`. The two differ by at most a few uint8 levels on ~0.1% of values.
    Returns a tensor of the input dtype; the input itself when the size is unchanged.
    """
    height, width = int(size[0]), int(size[1])
    if tuple(frames.shape[-2:]) == (height, width):
        return frames
    if backend == "pil":
        if frames.dtype != torch.uint8:
            raise ValueError("the PIL resize backend needs uint8 frames")
        out = [
            np.asarray(Image.fromarray(f.permute(1, 2, 0).numpy()).resize((width, height), Image.Resampling.BICUBIC))
            for f in frames
        ]
        return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)
    if backend != "torch":
        raise ValueError(f"unknown resize backend {backend!r}: use 'torch' or 'pil'")
    if frames.dtype not in (torch.uint8, torch.float32, torch.float64):
        frames = frames.float()
    return F.interpolate(frames, size=[height, width], mode="bicubic", align_corners=False, antialias=True)


class PatchWriter:
    """Frames -> `pixel_values_videos` / `pixel_values` rows (SPEC §6, §7); the preallocated float32 output is the
    only float copy.

    Rows are [grid_t*grid_h*grid_w, C*tp*P*P] (tp = temporal_patch_size, P = patch_size: 3·2·16·16 = 1536 values),
    ordered (grid_t, grid_h/merge, grid_w/merge, merge, merge) so each 2×2 merge block is contiguous, each row flattened
    (C, tp, P, P); a frame count that is not a multiple of tp is padded by the caller (an image is one frame written
    tp times). Each complete temporal group is gathered, still uint8, into patch order in a one-group staging buffer;
    then `(x - mean/rescale) / (std/rescale)` writes it into its output rows, the division running on rows still in
    cache. These are transformers' float32 operations (its fused rescale+normalise, IEEE subtraction and division,
    correctly rounded in numpy as in torch), so the rows are bit-identical to `Qwen3VLVideoProcessor` and the Qwen2-VL
    image processor. numpy, not torch: per-group torch calls each cross a thread-pool barrier, which on a busy
    machine costs more than the work (bench/bench_preprocess.py). Memory: the output plus one group of frames at
    the target size, so a long clip never exists as a whole in uint8 or in float.
    """

    def __init__(self, mean, std, patch_size, merge_size, temporal_patch_size, rescale: float = 1 / 255):
        # as transformers computes them (float32 mean / rescale), for equal bits
        self.mean = (torch.tensor(mean, dtype=torch.float32) * (1.0 / rescale)).numpy()[:, None]
        self.std = (torch.tensor(std, dtype=torch.float32) * (1.0 / rescale)).numpy()[:, None]
        self.p, self.m, self.tp = patch_size, merge_size, temporal_patch_size
        self.rows: torch.Tensor | None = None
        self.prefault: threading.Thread | None = None
        self.stage: np.ndarray | None = None
        self.grid: list[int] = []
        self.pending: dict[int, dict[int, np.ndarray]] = {}
        self.done: set[int] = set()

    def __call__(self, slots: Sequence[int], frame, num_slots: int) -> None:
        """Place one frame (numpy [H, W, C] or tensor [C, H, W]; uint8, or 0-255 floats) at each frame position in
        `slots`, of `num_slots` positions in all (a multiple of `temporal_patch_size`; the caller pads)."""
        hwc = frame if isinstance(frame, np.ndarray) else frame.permute(1, 2, 0).numpy()
        if self.rows is None:
            h, w, c = hwc.shape
            if h % (self.p * self.m) or w % (self.p * self.m):
                raise ValueError(f"frame size {h}x{w} is not a multiple of {self.p * self.m}")
            if num_slots % self.tp:
                raise ValueError(f"{num_slots} frames is not a multiple of temporal_patch_size={self.tp}")
            self.grid = [num_slots // self.tp, h // self.p, w // self.p]
            self.rows = torch.empty(math.prod(self.grid), c * self.tp * self.p**2, dtype=torch.float32)
            self.prefault = _prefault(self.rows)
            # uint8 stays uint8 up to the float pass; other dtypes become float32 first, as transformers does
            dtype = np.uint8 if hwc.dtype == np.uint8 else np.float32
            gh, gw, m, p = self.grid[1], self.grid[2], self.m, self.p
            self.stage = np.empty((gh // m, gw // m, m, m, c, self.tp, p, p), dtype)
        for slot in slots:
            group = self.pending.setdefault(slot // self.tp, {})
            group[slot % self.tp] = hwc
            if len(group) == self.tp:
                self._write(slot // self.tp, [group[t] for t in range(self.tp)])
                del self.pending[slot // self.tp]

    def _write(self, index: int, frames: list[np.ndarray]) -> None:
        _, gh, gw = self.grid
        p, m = self.p, self.m
        for t, hwc in enumerate(frames):
            # (h, w, c) -> (gh/m, gw/m, m, m, c, p, p): the row order of `patchify`
            self.stage[:, :, :, :, :, t] = hwc.reshape(gh // m, m, p, gw // m, m, p, -1).transpose(0, 3, 1, 4, 6, 2, 5)
        c = self.stage.shape[4]
        block = self.rows[index * gh * gw : (index + 1) * gh * gw].numpy().reshape(gh * gw, c, -1)
        np.subtract(self.stage.reshape(gh * gw, c, -1), self.mean, out=block)
        np.divide(block, self.std, out=block)
        self.done.add(index)

    def result(self) -> tuple[torch.Tensor, list[int]]:
        """(rows [grid_t*grid_h*grid_w, C*tp*P*P] float32, [grid_t, grid_h, grid_w]). Raises ValueError when some
        frame position never received a frame."""
        if self.rows is None or self.pending or len(self.done) != self.grid[0]:
            raise ValueError("internal error: some video frames were never decoded")
        if self.prefault is not None:
            self.prefault.join()
        return self.rows, self.grid


def _prefault(tensor: torch.Tensor, min_bytes: int = 1 << 26) -> threading.Thread | None:
    """Fault in the pages of a fresh `tensor` (>= `min_bytes`) on another thread, leaving its contents alone (Linux
    `madvise(MADV_POPULATE_WRITE)`, kernel >= 5.14; elsewhere nothing happens). Why: the first touch of a ~0.5 GB
    `pixel_values_videos` costs 0.2-0.3 s of page faults (bench/RESULTS.md), which would otherwise fall on the
    thread writing the rows; here they overlap decoding. Returns the thread (join before relying on it) or None."""
    size = tensor.numel() * tensor.element_size()
    if size < min_bytes or not sys.platform.startswith("linux"):
        return None
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    start = -(-tensor.data_ptr() // mmap.PAGESIZE) * mmap.PAGESIZE  # whole pages inside the tensor
    end = (tensor.data_ptr() + size) // mmap.PAGESIZE * mmap.PAGESIZE
    thread = threading.Thread(target=madvise, args=(start, end - start, 23), daemon=True)  # 23: MADV_POPULATE_WRITE
    thread.start()
    return thread


class PatchLayoutMixin:
    """What the image and the video processor share (SPEC §2, §7): the vision tower's geometry (`patch_size` 16,
    `temporal_patch_size` 2, `merge_size` 2 pixels/frames), the normalisation (`image_mean`, `image_std`, 0.5), the
    resize kernel (`resize_backend`: "pil" = PIL bicubic, "torch" = torchvision's antialiased bicubic) and the
    patch writer; and a saved config holding only the constructor's settings (transformers' base classes add
    attributes of their own torchvision pipelines, which these processors do not run).

    Raises:
        ValueError: an unknown `resize_backend` (naming it and the allowed values).
    """

    # constructor arguments every part takes, with their defaults (SPEC §2 vision config)
    LAYOUT_DEFAULTS = {
        "patch_size": vision_settings.PATCH_SIZE, "temporal_patch_size": vision_settings.TEMPORAL_PATCH_SIZE,
        "merge_size": vision_settings.MERGE_SIZE, "image_mean": vision_settings.IMAGE_MEAN,
        "image_std": vision_settings.IMAGE_STD,
    }  # fmt: skip

    def _set_layout(self, resize_backend: str, layout: dict) -> dict:
        """Set `resize_backend` and the `LAYOUT_DEFAULTS` keys popped from `layout` (a constructor's **kwargs);
        returns what is left of `layout` for transformers' base class."""
        if resize_backend not in RESIZE_BACKENDS:
            raise ValueError(f"resize_backend must be one of {RESIZE_BACKENDS}, got {resize_backend!r}")
        for name, default in self.LAYOUT_DEFAULTS.items():
            value = layout.pop(name, default)
            setattr(self, name, list(value) if name in ("image_mean", "image_std") else value)
        self.resize_backend = resize_backend
        return layout

    def explicit_size(self, settings: dict) -> tuple[int, int] | None:
        """qwen-vl-utils: an explicit `resized_height` x `resized_width` (pixels) is only rounded to multiples of
        the factor, within 4 and 16,384 tokens; None when `settings` gives none."""
        if not (settings.get("resized_height") and settings.get("resized_width")):
            return None
        factor = self.factor
        return vision_settings.smart_resize(
            settings["resized_height"], settings["resized_width"], factor,
            vision_settings.EXPLICIT_SIZE_MIN_TOKENS * factor**2, vision_settings.EXPLICIT_SIZE_MAX_TOKENS * factor**2,
        )  # fmt: skip

    @staticmethod
    def _batch(data: dict, return_tensors) -> BatchFeature:
        if return_tensors == "np":
            data = {k: v.numpy() for k, v in data.items()}
        return BatchFeature(data=data, tensor_type=return_tensors)

    @property
    def factor(self) -> int:
        """Resized sides are multiples of this many pixels (patch_size · merge_size = 32)."""
        return self.patch_size * self.merge_size

    def patch_writer(self) -> PatchWriter:
        return PatchWriter(self.image_mean, self.image_std, self.patch_size, self.merge_size, self.temporal_patch_size)

    def to_dict(self) -> dict:
        """The constructor's settings, `auto_map` and the processor class: what `from_pretrained` needs back. No
        `video_processor_type`: transformers 4.57's AutoVideoProcessor looks it up among its own classes and fails
        on ours; the `auto_map` entry is what loads the class (with trust_remote_code=True)."""
        import inspect  # noqa: PLC0415

        keep = set(inspect.signature(type(self).__init__).parameters) - {"self", "kwargs"} | set(self.LAYOUT_DEFAULTS)
        keep |= {"auto_map", "_processor_class", "processor_class", "image_processor_type"}
        return {key: value for key, value in super().to_dict().items() if key in keep}


class InternVideo3ImageProcessor(PatchLayoutMixin, BaseImageProcessor):
    r"""Images -> `pixel_values` [sum of grid_h·grid_w, 1536] float32 and `image_grid_thw` [n_images, 3] int64 (SPEC §7).

    Each image is resized (bicubic) to sides that are multiples of 32 pixels with between `min_pixels` and
    `max_pixels` pixels (transformers' Qwen2-VL rule, `smart_resize`), normalised with `image_mean` / `image_std`,
    and written as `temporal_patch_size` copies of one frame in the vision tower's patch order. The result equals
    transformers' PIL Qwen2-VL image processor's for the same settings.

    Args:
        min_pixels, max_pixels: per-image pixel bounds (defaults 65,536 / 16,777,216, the Qwen3-VL release); a bound
            given alone below/above the other default makes that default yield.
        resize_backend: "pil" (default, = transformers' PIL image processor) or "torch".
        patch_size, temporal_patch_size, merge_size, image_mean, image_std (keywords): see `PatchLayoutMixin`.

    Settings of one call (`min_pixels`, `max_pixels`, `image_min_pixels`, `image_max_pixels`, `resized_height`,
    `resized_width`) and of one chat item beat these (order: `vision_settings_internvideo3`).

    Raises:
        ValueError: a setting out of range, or `min_pixels > max_pixels` (naming both values).
    """

    model_input_names = ["pixel_values", "image_grid_thw"]
    # save_pretrained writes auto_map {"AutoImageProcessor": ...} and copies this file with its siblings
    _auto_class = "AutoImageProcessor"

    def __init__(self, min_pixels: int | None = None, max_pixels: int | None = None, resize_backend="pil", **kwargs):
        super().__init__(**self._set_layout(resize_backend, kwargs))
        given = vision_settings.given_keys({"min_pixels": min_pixels, "max_pixels": max_pixels})
        self.min_pixels, self.max_pixels = vision_settings.resolve_bounds(
            [given], ("min_pixels",), ("max_pixels",), (vision_settings.IMAGE_MIN_PIXELS, vision_settings.IMAGE_MAX_PIXELS)
        )

    def merge_settings(self, *levels: dict | None) -> VisionSettings:
        """This processor's bounds updated by `levels` (call, then item; `None` values are not set), merged in the
        documented order and validated once: {"image_min_pixels", "image_max_pixels"} and, when a level sets them,
        "resized_height" / "resized_width" (pixels). On one level `image_min_pixels` beats `min_pixels`.

        Raises:
            ValueError: naming the setting, the value and the allowed range.
        """
        levels = [vision_settings.given_keys(level) for level in levels]
        own = {"image_min_pixels": self.min_pixels, "image_max_pixels": self.max_pixels}
        low, high = vision_settings.resolve_bounds(
            [own, *levels], ("image_min_pixels", "min_pixels"), ("image_max_pixels", "max_pixels"), (None, None)
        )
        settings = {"image_min_pixels": low, "image_max_pixels": high}
        for level in levels:
            settings.update({k: level[k] for k in ("resized_height", "resized_width") if k in level})
        vision_settings.check_settings(settings)
        return VisionSettings(settings)

    def target_size(self, height: int, width: int, settings: dict | None = None) -> tuple[int, int]:
        """Resized (height, width) in pixels of a `height`×`width` image under `settings` (call-level keys, or
        settings from `merge_settings`): transformers' Qwen2-VL/Qwen3-VL rule; an explicit `resized_height` /
        `resized_width` is only rounded to multiples of 32 (qwen-vl-utils)."""
        merged = settings if isinstance(settings, VisionSettings) else self.merge_settings(settings)
        low, high = merged["image_min_pixels"], merged["image_max_pixels"]
        return self.explicit_size(merged) or vision_settings.smart_resize(height, width, self.factor, low, high)

    def process(self, images: list, settings: list[VisionSettings], do_resize=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(pixel_values [N, 1536] float32, image_grid_thw [len(images), 3] int64) for `images` (see `load_image`;
        arrays [H, W, C] / [C, H, W]), one merged settings per image. `do_resize=False` keeps each image's size (its
        sides must then be multiples of 32)."""
        rows, grids = [], []
        for image, merged in zip(images, settings):
            tensor = as_frames([image])
            if do_resize is not False:
                target = self.target_size(*tensor.shape[-2:], merged)
                backend = self.resize_backend if tensor.dtype == torch.uint8 else "torch"
                tensor = resize_frames(tensor, target, backend)
            writer = self.patch_writer()
            writer(range(self.temporal_patch_size), tensor[0], self.temporal_patch_size)  # one frame, tp times
            patches, grid = writer.result()
            rows.append(patches)
            grids.append(grid)
        return torch.cat(rows), torch.tensor(grids, dtype=torch.long)

    def preprocess(self, images, do_resize=None, return_tensors="pt", **settings) -> BatchFeature:
        """`pixel_values` and `image_grid_thw` of an image or a list of images; `settings`: this call's bounds
        (`min_pixels`, `max_pixels`, `image_min_pixels`, `image_max_pixels`, `resized_height`, `resized_width`).

        Raises:
            TypeError: an unknown keyword argument. ValueError: a setting out of range, or not an image.
        """
        unknown = set(settings) - {"min_pixels", "max_pixels", "image_min_pixels", "image_max_pixels",
                                   "resized_height", "resized_width"}  # fmt: skip
        if unknown:
            raise TypeError(f"InternVideo3ImageProcessor got unexpected keyword arguments: {sorted(unknown)}")
        images = list(images) if isinstance(images, (list, tuple)) else [images]
        merged = self.merge_settings(settings)
        pixel_values, grids = self.process(images, [merged] * len(images), do_resize)
        return self._batch({"pixel_values": pixel_values, "image_grid_thw": grids}, return_tensors)

    def __call__(self, images, **kwargs) -> BatchFeature:
        return self.preprocess(images, **kwargs)
