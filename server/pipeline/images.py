"""Turning what a client sends into frames: uint8 [H, W, 3], C-contiguous, in the pipeline's channel order.

JPEG goes through simplejpeg (libjpeg-turbo, strict: a truncated or corrupt file is an error, not a grey
smear); PNG, BMP, TIFF, WebP, AVIF, HEIC/HEIF (pi-heif's libheif), JPEG 2000 and GIF go through Pillow (the
first frame of an animated or multi-page file): what ultralytics reads (OpenCV's imdecode, pi-heif for HEIC);
raw pixels are checked against their stated size and layout, and camera frames in a ``sensor_msgs``
encoding (Bayer, YUV 4:2:2, 16-bit, ...) are converted by the native kernels (``kernels.convert_raw``).
Nothing is decoded before the request's cost is known:

1. :func:`open_encoded`, :func:`open_raw`, :func:`open_array` read each image's size (from the file's header,
   or as stated) and check it against the model's pixel limit and the letterbox kernel's side limit; they
   give a :class:`PendingFrame`.
2. :func:`decode_frames` checks the request's decoded bytes (H x W x 3 per image) against the model's
   per-request limit, holds them (and the decoders' working memory) from the server's in-flight budget
   (:data:`IN_FLIGHT`), then decodes.

So a small file that claims to be 100k x 100k, or sixteen 8192 x 8192 one-bit PNGs, cost a header read.
Every error is :class:`InvalidArgument` naming the field (:class:`ResourceExhausted` for the in-flight
budget); whatever Pillow or libjpeg-turbo raise on a file is the file's fault, never INTERNAL.

A file's EXIF orientation (JPEG's APP1, PNG's eXIf, WebP's EXIF chunk; TIFF's own tag, which Pillow
applies) is applied as OpenCV's ``imdecode`` applies it, ultralytics' reader: the frame, its size and the
boxes are those of the photograph as it is shown, not as the sensor stored it.
"""

from __future__ import annotations

import io
import struct
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import simplejpeg
from PIL import Image

from ... import kernels
from ..config.server import ServerConfig
from ..core.errors import InvalidArgument, PeregrineError, ResourceExhausted, clipped

ChannelOrder = Literal["rgb", "bgr"]

DEFAULT_MAX_PIXELS = 8192 * 8192
DEFAULT_MAX_DECODED_BYTES_PER_REQUEST = 256 << 20  # detection.max_decoded_bytes_per_request
DEFAULT_MAX_DECODED_BYTES_IN_FLIGHT = ServerConfig.max_decoded_bytes_in_flight
# The letterbox kernels refuse a frame with a side over 2^20 pixels (peregrine.kernels: _preprocess._frames
# and bindings/preprocess.cpp read_args). Every other size they take: the resized size of any frame is
# clamped to at least one pixel and at most the model's input, whatever the aspect ratio.
MAX_SIDE = 1 << 20

# Memory a decoder takes beyond the frame it returns, at its peak, in bytes per pixel (measured with
# ru_maxrss on 2048-4096 px images): libjpeg-turbo's coefficient buffers of a progressive 4:4:4 JPEG (a
# baseline JPEG takes none); Pillow's image in its own mode (up to 4 bytes a pixel), its RGB copy (4) and
# the bytes NumPy reads (3); WebP's canvases on top.
_WORKING_BYTES_PER_PIXEL = {"JPEG": 6, "PNG": 12, "BMP": 12, "TIFF": 12, "WEBP": 20, "GIF": 12,
                            # libavif (dav1d) and libheif (libde265) planes and their RGB conversion; OpenJPEG's
                            # 32-bit samples (measured 9.4, 7.2 and 16.7 at 2048 x 2048)
                            "AVIF": 12, "HEIF": 12, "JPEG2000": 20}

# A tiled TIFF's tile, decoded whole by libtiff: bounded, and counted as working memory (up to 4 samples of
# 16 bits a pixel).
MAX_TIFF_TILE_PIXELS = 1 << 20
_TILE_BYTES_PER_PIXEL = 8

_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_PIL_FORMATS = ("PNG", "BMP", "TIFF", "WEBP", "AVIF", "HEIF", "JPEG2000", "GIF")
_FORMATS_NAMED = "JPEG, PNG, BMP, TIFF, WebP, AVIF, HEIC/HEIF, JPEG 2000 or GIF"
# Pillow modes with no meaningful 8-bit RGB conversion (Pillow's conversion clips 32-bit values to 0..255).
_UNSUPPORTED_MODES = {"I": "32-bit integer", "F": "32-bit float"}
_SIXTEEN_BIT_GREY = ("I;16", "I;16L", "I;16B", "I;16N")


# -- the in-flight budget ------------------------------------------------------------------------
class DecodedBytesBudget:
    """Bytes of decoded frames that requests hold at once, across the server, from decoding until they
    are answered (and, while a request decodes, its decoder's working memory). Admission, not queueing:
    a request that does not fit is refused at once. Thread-safe."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held = 0
        self._lock = threading.Lock()

    @property
    def held(self) -> int:
        """Bytes held now."""
        return self._held

    def hold(self, nbytes: int, field: str) -> Hold:
        """Hold ``nbytes`` until the returned :class:`Hold` is released. Raises ResourceExhausted, naming
        ``field`` and the budget, when they do not fit."""
        with self._lock:
            held = self._held
            if held + nbytes > self.limit:
                raise ResourceExhausted(
                    f"{field}: decoding needs {nbytes} bytes and the server's decoded frames in flight hold "
                    f"{held} of its {self.limit} (max_decoded_bytes_in_flight, --max-decoded-mb-in-flight); "
                    f"retry later"
                )
            self._held = held + nbytes
        return Hold(self, nbytes)

    def _give_back(self, hold: Hold, keep: int) -> None:
        with self._lock:
            if keep < hold.nbytes:
                self._held -= hold.nbytes - keep
                hold.nbytes = keep


class Hold:
    """Bytes held from a :class:`DecodedBytesBudget`; :meth:`release` may be called any number of times,
    from any thread."""

    def __init__(self, budget: DecodedBytesBudget, nbytes: int) -> None:
        self.budget = budget
        self.nbytes = nbytes

    def shrink(self, nbytes: int) -> None:
        """Keep only ``nbytes`` (no more than held now)."""
        self.budget._give_back(self, nbytes)

    def release(self) -> None:
        self.budget._give_back(self, 0)


#: The server's budget (one per process); ``max_decoded_bytes_in_flight`` of its ServerConfig sets the limit.
IN_FLIGHT = DecodedBytesBudget(DEFAULT_MAX_DECODED_BYTES_IN_FLIGHT)


def set_max_decoded_bytes_in_flight(limit: int) -> None:
    """Set the limit of :data:`IN_FLIGHT` (the server does at start, from its ServerConfig)."""
    if limit < 1:
        raise ValueError(f"max_decoded_bytes_in_flight: expected a positive number of bytes, got {limit}")
    IN_FLIGHT.limit = limit


# -- step 1: sizes, checked ----------------------------------------------------------------------
@dataclass
class PendingFrame:
    """An image whose size is known and checked, not decoded yet: :meth:`decode` gives its frame."""

    field: str
    height: int
    width: int
    working_bytes: int  # memory its decoder takes beyond the frame, at its peak
    _decode: Callable[[], np.ndarray]

    @property
    def frame_bytes(self) -> int:
        return self.height * self.width * 3

    def decode(self) -> np.ndarray:
        """The uint8 [height, width, 3] C-contiguous frame. Raises InvalidArgument naming the field."""
        frame = self._decode()
        if frame.shape != (self.height, self.width, 3) or frame.dtype != np.uint8:  # a decoder that disagrees
            raise InvalidArgument(f"{self.field}: the image decoded to {frame.dtype} {list(frame.shape)}, not the "
                                  f"{self.height}x{self.width} its header states")
        return frame


def check_size(field: str, height: int, width: int, max_pixels: int) -> None:
    """InvalidArgument unless a ``height`` x ``width`` image is non-empty, within ``max_pixels`` and within
    the side length the letterbox kernels take (:data:`MAX_SIDE`)."""
    if height < 1 or width < 1:
        raise InvalidArgument(f"{field}: expected a non-empty image, got {height}x{width} pixels")
    if height * width > max_pixels:
        raise InvalidArgument(
            f"{field}: image of {width}x{height} = {height * width} pixels is over this model's limit of "
            f"{max_pixels} (detection.max_pixels)"
        )
    if height > MAX_SIDE or width > MAX_SIDE:
        raise InvalidArgument(
            f"{field}: image of {width}x{height} pixels has a side over {MAX_SIDE} pixels, the longest the "
            f"letterbox takes"
        )


def open_encoded(data: Any, field: str, order: ChannelOrder = "rgb",
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> PendingFrame:
    """An image file's size (any of :data:`_FORMATS_NAMED`), read from its header and checked (see :func:`check_size`);
    no pixel is decoded. Raises InvalidArgument for empty, unidentified or unreadable data."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidArgument(f"{field}: expected JPEG or PNG file bytes, got {type(data).__name__}")
    data = bytes(data) if not isinstance(data, bytes) else data
    if not data:
        raise InvalidArgument(f"{field}: expected JPEG or PNG file bytes, got 0 bytes")
    if data[:3] == _JPEG_MAGIC:
        return _open_jpeg(data, field, order, max_pixels)
    return _open_pillow(data, field, order, max_pixels)


# -- EXIF orientation ------------------------------------------------------------------------------
_ORIENTATION_TAG = 0x0112
_EXIF_PREFIX = b"Exif\x00\x00"
# Segments (and fill bytes) looked at for the EXIF block before a JPEG's frame header: cameras write it
# first, after at most a JFIF segment; a file of endless tiny segments costs no more than these.
_JPEG_MAX_SEGMENTS = 64


def _orientation(exif: bytes | None) -> int:
    """The orientation (1..8) an EXIF block (TIFF-structured, with or without its ``Exif`` prefix) states;
    1 when it states none, or none of these, or cannot be read (OpenCV ignores it then too)."""
    if not exif:
        return 1
    try:
        value = Image.Exif()
        value.load(exif)
        orientation = value.get(_ORIENTATION_TAG, 1)
    except Exception:  # a broken EXIF block is not the image's pixels: shown as stored
        return 1
    return orientation if isinstance(orientation, int) and 1 <= orientation <= 8 else 1


def _jpeg_exif(data: bytes) -> bytes | None:
    """The EXIF block of a JPEG's APP1 segment, found by walking its markers up to the first frame or scan
    header: at most _JPEG_MAX_SEGMENTS steps, each on by a segment's stated length."""
    pos = 2
    for _ in range(_JPEG_MAX_SEGMENTS):
        if pos + 4 > len(data) or data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xDA, 0xD9) or (0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC)):
            return None  # scan, end or frame header: the APPn segments come before these
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker == 0xE1 and data[pos + 4 : pos + 10] == _EXIF_PREFIX:
            return data[pos + 4 : pos + 2 + length]
        pos += 2 + max(length, 2)
    return None


def _upright(height: int, width: int, orientation: int) -> tuple[int, int]:
    """The size of a ``height`` x ``width`` image shown with ``orientation`` (5..8 turn it a quarter)."""
    return (width, height) if orientation >= 5 else (height, width)


def _oriented(frame: np.ndarray, orientation: int) -> np.ndarray:
    """``frame`` turned and mirrored as ``orientation`` says it is shown, C-contiguous (itself for 1). Moved
    as whole pixels (3-byte items): a third of the moves a byte-wise copy makes."""
    if orientation == 1:
        return frame
    h, w, _ = frame.shape
    px = np.ascontiguousarray(frame).view(np.dtype((np.void, 3))).reshape(h, w)
    view = {2: px[:, ::-1], 3: px[::-1, ::-1], 4: px[::-1], 5: px.T, 6: px[::-1].T, 7: px[::-1, ::-1].T,
            8: px[:, ::-1].T}[orientation]
    out = np.ascontiguousarray(view)
    return out.view(np.uint8).reshape(out.shape[0], out.shape[1], 3)


def _open_jpeg(data: bytes, field: str, order: ChannelOrder, max_pixels: int) -> PendingFrame:
    try:
        stored_height, stored_width, _, _ = simplejpeg.decode_jpeg_header(data)
    except Exception as e:  # whatever libjpeg-turbo says of a file is the file's fault
        raise InvalidArgument(f"{field}: not a readable JPEG ({_reason(e)})") from None
    orientation = _orientation(_jpeg_exif(data))
    height, width = _upright(stored_height, stored_width, orientation)
    check_size(field, height, width, max_pixels)

    def decode() -> np.ndarray:
        try:
            frame = simplejpeg.decode_jpeg(data, colorspace="RGB" if order == "rgb" else "BGR", strict=True)
            return _oriented(frame, orientation)
        except MemoryError:
            raise ResourceExhausted(f"{field}: out of memory decoding a {width}x{height} JPEG") from None
        except Exception as e:
            raise InvalidArgument(f"{field}: corrupt or truncated JPEG ({_reason(e)})") from None

    return PendingFrame(field, height, width, _WORKING_BYTES_PER_PIXEL["JPEG"] * height * width, decode)


def _open_pillow(data: bytes, field: str, order: ChannelOrder, max_pixels: int) -> PendingFrame:
    if data[:8] == _PNG_MAGIC:
        # Opening a PNG, Pillow reads (and inflates: up to 64 MiB) every chunk before the pixels; none but
        # these make the frame.
        data, exif = _png_pixel_chunks(data)
        orientation, tile = _orientation(exif), 0
        width, height, fmt, mode = *_png_size(data, field), "PNG", ""
    else:
        with _pillow(data, field) as img:
            (width, height), fmt, mode = img.size, img.format or "image", img.mode
            # TIFF: Pillow applies the orientation as it loads, and its size here is already the upright one
            orientation = _orientation(img.info.get("exif")) if fmt == "WEBP" else 1
            tile = _tiff_tile(img, field) if fmt == "TIFF" else 0
    height, width = _upright(height, width, orientation)
    check_size(field, height, width, max_pixels)
    if mode in _UNSUPPORTED_MODES:
        raise InvalidArgument(f"{field}: {fmt} of {_UNSUPPORTED_MODES[mode]} pixels (Pillow mode {mode}) is not "
                              f"supported; send 8- or 16-bit images")

    def decode() -> np.ndarray:
        with _pillow(data, field) as img:
            try:
                if img.mode in _UNSUPPORTED_MODES:
                    raise InvalidArgument(f"{field}: {fmt} of {_UNSUPPORTED_MODES[img.mode]} pixels is not supported")
                if img.mode in _SIXTEEN_BIT_GREY:  # the high byte, as Pillow reads 16-bit RGB PNGs (and OpenCV)
                    grey = (np.asarray(img) >> 8).astype(np.uint8)
                    frame = np.repeat(grey[:, :, None], 3, axis=2)
                elif img.mode == "RGB":
                    frame = np.asarray(img)
                else:
                    # Alpha is dropped, and so is a transparent colour: Pillow would warn converting a
                    # palette whose transparency it cannot carry over.
                    img.info.pop("transparency", None)
                    frame = np.asarray(img.convert("RGB"))
            except PeregrineError:
                raise
            except MemoryError:
                raise ResourceExhausted(f"{field}: out of memory decoding a {width}x{height} {fmt}") from None
            except Exception as e:  # truncated, corrupt, unsupported: the file's fault
                raise InvalidArgument(f"{field}: corrupt or truncated {fmt} ({_reason(e)})") from None
        if order == "bgr":
            frame = frame[:, :, ::-1]
        return _oriented(np.ascontiguousarray(frame), orientation)

    working = _WORKING_BYTES_PER_PIXEL.get(fmt, max(_WORKING_BYTES_PER_PIXEL.values())) * height * width
    return PendingFrame(field, height, width, working + tile * _TILE_BYTES_PER_PIXEL, decode)


def _tiff_tile(img: Image.Image, field: str) -> int:
    """The pixels of one tile of a tiled TIFF (0 for one in strips), which libtiff holds whole as it decodes,
    whatever the image's size: InvalidArgument when a tile is larger than :data:`MAX_TIFF_TILE_PIXELS` and
    than four times the image (a 16 x 16 image in one 16384 x 16384 tile costs 768 MB to decode)."""
    tile_width, tile_height = img.tag_v2.get(322), img.tag_v2.get(323)  # TileWidth, TileLength
    if not isinstance(tile_width, int) or not isinstance(tile_height, int):
        return 0
    width, height = img.size
    pixels = tile_width * tile_height
    if pixels > max(MAX_TIFF_TILE_PIXELS, 4 * width * height):
        raise InvalidArgument(f"{field}: TIFF tiles of {tile_width}x{tile_height} pixels for a {width}x{height} image; "
                              f"at most {MAX_TIFF_TILE_PIXELS} pixels a tile, or four times the image, are taken")
    return pixels


def _png_pixel_chunks(data: bytes) -> tuple[bytes, bytes | None]:
    """A PNG with only the chunks its frame comes from: IHDR, PLTE, IDAT and IEND, and its eXIf chunk's
    payload (None without one). Gone are text (zTXt and iTXt, which Pillow inflates as it opens the file),
    colour profiles, APNG control chunks (the file's default image, its first frame, is what remains) and
    transparency (alpha is dropped anyway). A chunk that runs past the end is kept as it is, for Pillow to
    call truncated."""
    kept, pos, exif = [data[:8]], 8, None
    while pos + 8 <= len(data):
        kind, end = data[pos + 4 : pos + 8], pos + 12 + int.from_bytes(data[pos : pos + 4], "big")
        if kind in (b"IHDR", b"PLTE", b"IDAT", b"IEND"):
            kept.append(data[pos:end])
        elif kind == b"eXIf" and exif is None:
            exif = data[pos + 8 : end - 4]
        if kind == b"IEND":
            break
        pos = end
    return b"".join(kept), exif


def _png_size(data: bytes, field: str) -> tuple[int, int]:
    """A PNG's width and height, from its IHDR chunk (the first, at a fixed place)."""
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise InvalidArgument(f"{field}: corrupt or truncated PNG (no IHDR chunk where the format puts it)")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _pillow(data: bytes, field: str) -> Image.Image:
    """``data`` opened by Pillow (its header read, no pixel decoded). Raises InvalidArgument naming ``field``
    when it is none of the Pillow formats, or Pillow cannot read its header."""
    _ignore_pillow_warnings()
    try:
        img = _pillow_header(data)
    except MemoryError:
        raise ResourceExhausted(f"{field}: out of memory reading an image header") from None
    except Exception as e:  # Pillow's parsers raise many types on hostile files
        raise InvalidArgument(f"{field}: corrupt or truncated image ({_reason(e)})") from None
    if img is None:
        raise InvalidArgument(
            f"{field}: expected {_FORMATS_NAMED} file bytes, got {len(data)} bytes starting "
            f"{data[:8].hex()}"
        )
    return img


_heif_registered = False


def _register_heif() -> None:
    """HEIC/HEIF as a Pillow format, read by pi-heif (libheif with libde265: decoding only), as ultralytics
    reads it; once per process. Without pi-heif installed, HEIC is refused like any unknown format."""
    global _heif_registered
    if _heif_registered:
        return
    _heif_registered = True
    try:
        from pi_heif import register_heif_opener
    except ImportError:
        return
    register_heif_opener()


def _pillow_header(data: bytes) -> Image.Image | None:
    """``data`` opened as one of the Pillow formats, or None when it is none of them. What ``Image.open``
    does, less Pillow's decompression-bomb check: a process-wide pixel limit (``Image.MAX_IMAGE_PIXELS``)
    that raises, or warns, before the model's own ``max_pixels`` is consulted. (TIFF checks it again as
    it decodes: a TIFF over twice that limit, 178,956,970 pixels by default, is refused even where a model
    allows more.)"""
    Image.init()  # registers every plugin, once (TIFF and WebP are not among Image.preinit's)
    _register_heif()
    prefix = data[:16]
    for fmt in _PIL_FORMATS:
        entry = Image.OPEN.get(fmt)
        if entry is None:  # e.g. Pillow built without WebP
            continue
        factory, accept = entry
        if accept is not None:
            accepted = accept(prefix)
            if not accepted or isinstance(accepted, str):  # a str: recognised, but Pillow cannot read it
                continue
        try:
            return factory(io.BytesIO(data), "")
        except (SyntaxError, IndexError, TypeError, EOFError, struct.error):  # Image.open's "not this format"
            continue
    return None


_PILLOW_MODULES = r"PIL(\.|$)"
_PILLOW_WARNINGS = (UserWarning, Image.DecompressionBombWarning)
_filters_lock = threading.Lock()


def _ignore_pillow_warnings() -> None:
    """Pillow warns about odd files: an invalid APNG control chunk, TIFF tags past the file's end, a size
    over its own pixel limit (the model's ``max_pixels`` is the limit here). Those are remarks on a
    client's file, not the server's to print, nor to raise where warnings are errors (a ``-W error`` run,
    as the tests are), which would answer a file there INVALID_ARGUMENT and OK elsewhere. So these
    warnings from Pillow's modules are ignored, process-wide; the filters go back in front whenever
    something (a test's ``catch_warnings``) took them away."""
    if all(_is_pillow_filter(f, c) for f, c in zip(warnings.filters, _PILLOW_WARNINGS, strict=False)) and len(
            warnings.filters) >= len(_PILLOW_WARNINGS):
        return
    with _filters_lock:
        for category in reversed(_PILLOW_WARNINGS):
            warnings.filterwarnings("ignore", category=category, module=_PILLOW_MODULES)


def _is_pillow_filter(entry: Any, category: type[Warning]) -> bool:
    action, _, cat, module, _ = entry
    return bool(action == "ignore" and cat is category and module is not None
                and module.pattern == _PILLOW_MODULES)


def open_raw(data: Any, height: int, width: int, channels: int, field: str,
             max_pixels: int = DEFAULT_MAX_PIXELS, *, encoding: str = "", step: int = 0,
             is_bigendian: bool = False, order: ChannelOrder = "rgb") -> PendingFrame:
    """Raw pixels of a stated size, checked (see :func:`check_size`); nothing is converted yet.

    With no ``encoding``: HWC uint8 with 1, 3 or 4 ``channels``, taken as the pipeline's channel order (the
    frame is a view of ``data`` when it has 3 channels and packed rows). With an encoding (one of
    ``peregrine.kernels.RAW_ENCODINGS``, as ``sensor_msgs/Image`` names them): a camera frame the native
    kernels convert to ``order`` with cv_bridge's colours (``channels`` must then be 0 or the encoding's
    samples per pixel; YUV 4:2:2 needs an even width). Either way rows are ``step`` bytes (0: packed; else at
    least the packed row) and ``data`` is exactly ``step * height`` bytes. Raises InvalidArgument naming
    ``<field>.encoding``, ``.channels``, ``.width``, ``.step`` or ``.data``."""
    if encoding:
        if encoding not in kernels.RAW_ENCODINGS:
            raise InvalidArgument(f"{field}.encoding: expected one of {', '.join(kernels.RAW_ENCODINGS)} (or empty: "
                                  f"uint8 pixels by channels), got '{clipped(encoding)}'")
        enc = kernels.raw_encoding(encoding)
        if channels not in (0, enc.samples):
            raise InvalidArgument(f"{field}.channels: expected 0 or {enc.samples} ({encoding}'s samples per pixel), "
                                  f"got {channels}")
        what = f"{width} pixels of {encoding}"
    else:
        if channels not in (1, 3, 4):
            raise InvalidArgument(f"{field}.channels: expected 1, 3 or 4, got {channels}")
        enc, what = None, f"{width} x {channels} bytes"
    check_size(field, height, width, max_pixels)
    if enc is not None and enc.even_width and width % 2:
        raise InvalidArgument(f"{field}.width: expected an even width for {encoding} (two pixels share U and V), "
                              f"got {width}")
    row = enc.row_bytes(width) if enc is not None else width * channels
    if step and step < row:
        raise InvalidArgument(f"{field}.step: expected 0 (packed) or at least {row} bytes per row ({what}), got {step}")
    step = step or row
    if len(data) != step * height:
        shape = f"{height}x{width}x{channels}" if enc is None and step == row else f"step x height = {step} x {height}"
        raise InvalidArgument(f"{field}.data: expected {shape} = {step * height} bytes, got {len(data)}")
    if enc is not None:
        return PendingFrame(field, height, width, 0, lambda: _converted(data, encoding, height, width, step,
                                                                        is_bigendian, order, field))
    return PendingFrame(field, height, width, 0, lambda: raw_frame(
        np.frombuffer(data, np.uint8).reshape(height, step)[:, :row].reshape(height, width, channels), field,
        max_pixels))


def _converted(data: Any, encoding: str, height: int, width: int, step: int, is_bigendian: bool,
               order: ChannelOrder, field: str) -> np.ndarray:
    try:
        return kernels.convert_raw(data, encoding, height, width, step=step, is_bigendian=is_bigendian, order=order)
    except MemoryError:
        raise ResourceExhausted(f"{field}: out of memory converting a {width}x{height} {encoding} frame") from None


def open_array(array: np.ndarray, field: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> PendingFrame:
    """A uint8 [H, W, C] array (C = 3, or 1 grey / 4 with alpha), checked."""
    height, width = _check_array(array, field, max_pixels)
    return PendingFrame(field, height, width, 0, lambda: raw_frame(array, field, max_pixels))


# -- step 2: the request's bytes, then the pixels ----------------------------------------------------
def decode_frames(pending: Sequence[PendingFrame], field: str,
                  max_bytes: int = DEFAULT_MAX_DECODED_BYTES_PER_REQUEST,
                  budget: DecodedBytesBudget | None = None) -> tuple[list[np.ndarray], Hold]:
    """Decode a request's images, once their cost is known: InvalidArgument naming ``field`` when their
    frames (height x width x 3 bytes each) add up to more than ``max_bytes``; ResourceExhausted when the
    frames and the largest decoder's working memory do not fit in ``budget`` (default :data:`IN_FLIGHT`).
    Returns the frames and the :class:`Hold` of their bytes, which the caller releases once the request
    is answered."""
    total = sum(p.frame_bytes for p in pending)
    check_request_bytes(total, field, max_bytes, len(pending))
    working = max((p.working_bytes for p in pending), default=0)
    hold = (budget or IN_FLIGHT).hold(total + working, field)
    try:
        frames = [p.decode() for p in pending]
    except BaseException:
        hold.release()
        raise
    hold.shrink(total)
    return frames, hold


def check_request_bytes(total: int, field: str, max_bytes: int, images: int | None = None) -> None:
    """InvalidArgument naming ``field`` when a request's frames, ``total`` bytes, are over ``max_bytes``."""
    if total > max_bytes:
        count = f"{images} image(s) " if images is not None else ""
        raise InvalidArgument(
            f"{field}: {count}decode to {total} bytes (height x width x 3 each), over this model's limit of "
            f"{max_bytes} bytes per request (detection.max_decoded_bytes_per_request)"
        )


# -- one image at a time (no request budget) --------------------------------------------------------
def decode_image(data: Any, field: str, order: ChannelOrder = "rgb",
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode image file bytes (any of :data:`_FORMATS_NAMED`) into a uint8 [H, W, 3] frame.

    ``field`` names the request field in error messages. Raises :class:`InvalidArgument` for empty,
    truncated, corrupt or unsupported data and for images over ``max_pixels``.
    """
    return open_encoded(data, field, order, max_pixels).decode()


def raw_frame(array: np.ndarray, field: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Check a decoded uint8 [H, W, C] frame (C = 3, or 1 grey / 4 with alpha, which are converted) and
    return it as a C-contiguous [H, W, 3] array (no copy when it already is one)."""
    _check_array(array, field, max_pixels)
    channels = array.shape[2]
    if channels == 1:
        return np.repeat(array, 3, axis=2)
    if channels == 4:
        array = array[:, :, :3]
    return np.ascontiguousarray(array)


def raw_bytes_frame(data: Any, height: int, width: int, channels: int, field: str,
                    max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A frame from raw HWC uint8 bytes and its stated size (a view of ``data`` when it has 3 channels)."""
    return open_raw(data, height, width, channels, field, max_pixels).decode()


def _check_array(array: np.ndarray, field: str, max_pixels: int) -> tuple[int, int]:
    if array.dtype != np.uint8:
        raise InvalidArgument(f"{field}: expected uint8 pixels, got {array.dtype}")
    if array.ndim != 3:
        raise InvalidArgument(f"{field}: expected a [height, width, channels] frame, got shape {list(array.shape)}")
    height, width, channels = (int(d) for d in array.shape)
    if channels not in (1, 3, 4):
        raise InvalidArgument(f"{field}: expected 1, 3 or 4 channels, got {channels}")
    check_size(field, height, width, max_pixels)
    return height, width


def _reason(error: BaseException) -> str:
    """A decoder's error, short, for a client's message."""
    text = str(error) or type(error).__name__
    return text if len(text) <= 200 else text[:200] + "…"
