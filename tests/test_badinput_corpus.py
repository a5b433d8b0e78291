"""A corpus of 30 kinds of bad and unusual image files, built in the test from real images (Fashion-MNIST,
scikit-learn's photos): the folder scan reports what it skips, the extraction never aborts, every
decodable file is decoded (EXIF orientation honoured), every damaged one is recorded with its reason."""

from __future__ import annotations

import io
import logging
import os
import warnings

import numpy as np
import pytest
from PIL import Image

from tagood import data
from tagood.data.decode import open_image
from tagood.data.source import ImageDecodeError
from tagood.extract import extract_split


def _jpeg(img: Image.Image, **kw) -> bytes:
    b = io.BytesIO()
    img.save(b, "JPEG", quality=90, **kw)
    return b.getvalue()


def _png(img: Image.Image) -> bytes:
    b = io.BytesIO()
    img.save(b, "PNG")
    return b.getvalue()


def _exif_rotated(photo: Image.Image) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    return _jpeg(photo, exif=exif.tobytes())


def build_corpus(root, photos) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """Write the corpus; returns (decodable name -> kind, failing name -> expected reason, skipped name -> reason)."""
    d = root / "things"
    d.mkdir(parents=True)
    photo = photos["china.jpg"].resize((160, 120))
    item = data.fashion_mnist("test").load(0)
    ok: dict[str, str] = {}
    bad: dict[str, str] = {}
    skipped: dict[str, str] = {}

    def put(name: str, content: bytes, kind: str, fails: str | None = None) -> None:
        (d / name).write_bytes(content)
        (bad if fails else ok)[name] = fails or kind

    put("01_good.png", _png(item), "good PNG")
    put("02_good.jpg", _jpeg(photo), "good JPEG")
    put("03_truncated.jpg", _jpeg(photo)[:600], "truncated JPEG", "corrupt or truncated")
    put("04_truncated.png", _png(photo)[:300], "truncated PNG", "corrupt or truncated")
    put("05_empty.jpg", b"", "zero bytes", "not an image file")
    put("06_text.png", b"this is a text file, not a picture\n" * 5, "text named .png", "not an image file")
    put("07_garbage_after_header.png", b"\x89PNG\r\n\x1a\n" + os.urandom(200), "PNG signature then garbage", "cannot decode")
    put("08_jpeg_named.png", _jpeg(photo), "JPEG with a .png name")
    put("09_cmyk.jpg", _jpeg(photo.convert("CMYK")), "CMYK JPEG")
    put("10_grey16.png", _png(Image.fromarray(np.asarray(photo.convert("L"), np.uint16) * 257)), "16-bit grey PNG")
    pal = photo.convert("P", palette=Image.ADAPTIVE, colors=16)
    pal.info["transparency"] = 0
    b = io.BytesIO()
    pal.save(b, "PNG", transparency=0)
    put("11_palette_transparent.png", b.getvalue(), "palette PNG with transparency")
    b = io.BytesIO()
    photo.convert("1").save(b, "BMP")
    put("12_one_bit.bmp", b.getvalue(), "1-bit BMP")
    put("13_grey_alpha.png", _png(photo.convert("LA")), "grey + alpha PNG")
    b = io.BytesIO()
    photo.save(b, "GIF", save_all=True, append_images=[item.convert("RGB").resize((160, 120))], duration=100, loop=0)
    put("14_animated.gif", b.getvalue(), "animated GIF (first frame)")
    b = io.BytesIO()
    photo.save(b, "TIFF", save_all=True, append_images=[photo.rotate(90)])
    put("15_multipage.tif", b.getvalue(), "multi-page TIFF (first page)")
    b = io.BytesIO()
    photo.save(b, "WEBP")
    put("16_photo.webp", b.getvalue(), "WebP")
    put("17_exif_rotated.jpg", _exif_rotated(photo), "EXIF-rotated JPEG")
    put("18_bad_exif.jpg", _jpeg(photo, exif=b"Exif\x00\x00MM\x00*garbage-ifd"), "JPEG with a damaged EXIF block")
    put("19_one_pixel.png", _png(Image.new("RGB", (1, 1), (200, 10, 10))), "1x1 image")
    put("20_very_wide.png", _png(photo.resize((4000, 3))), "4000x3 image")
    put("21_upper.JPG", _jpeg(photo), "upper-case extension")
    b = io.BytesIO()
    photo.save(b, "GIF")
    put("22_gif_named.jpg", b.getvalue(), "GIF with a .jpg name")
    b = io.BytesIO()
    Image.fromarray(np.asarray(photo.convert("L"), np.int32) * 100, "I").save(b, "TIFF")
    put("23_int32.tif", b.getvalue(), "32-bit integer grey TIFF")
    put("24_jpeg_flipped_bytes.jpg", _jpeg(photo)[:200] + b"\x00" * 40 + _jpeg(photo)[240:], "JPEG with zeroed bytes")
    (d / "25_album.jpg").mkdir()
    skipped["25_album.jpg"] = "directory named like an image"
    os.mkfifo(d / "26_pipe.jpg")
    skipped["26_pipe.jpg"] = "not a regular file"
    (d / "27_dangling.png").symlink_to(root / "does-not-exist.png")
    skipped["27_dangling.png"] = "dangling symbolic link"
    (d / "28_link.png").symlink_to(d / "01_good.png")
    ok["28_link.png"] = "symbolic link to a good image"
    b = io.BytesIO()
    Image.fromarray(_nan_float(photo, 0.25), "F").save(b, "TIFF")
    put("29_some_nan.tif", b.getvalue(), "float TIFF with NaN pixels (read as 0, with a warning)")
    b = io.BytesIO()
    Image.fromarray(np.full((12, 16), np.nan, np.float32), "F").save(b, "TIFF")
    put("30_all_nan.tif", b.getvalue(), "float TIFF of NaN only", "every pixel is NaN or infinite")
    return ok, bad, skipped


def _nan_float(photo: Image.Image, share: float) -> np.ndarray:
    """A float greyscale picture in [0, 1] with its top ``share`` of rows NaN."""
    a = np.asarray(photo.convert("L"), np.float32) / 255.0
    a[: int(share * len(a))] = np.nan
    return a


def test_corpus_folder_scan_and_extraction(tmp_path, photos, backbone, caplog):
    ok, bad, skipped = build_corpus(tmp_path / "corpus", photos)
    assert len(ok) + len(bad) + len(skipped) == 30
    with caplog.at_level(logging.WARNING, logger="tagood"):
        src = data.FolderSource(tmp_path / "corpus")
    names = {os.path.basename(s.ident) for s in src.samples}
    assert names == set(ok) | set(bad)
    assert {os.path.basename(p): why for p, why in src.skipped} == {n: w for n, w in skipped.items()} | {
        "26_pipe.jpg": "not a regular file (FIFO, device or socket)"}
    for n in skipped:
        assert n in caplog.text  # each is named in a report line
    # JPEG with zeroed bytes may still decode (JPEG is forgiving): allow either outcome for it, not for the rest
    r = extract_split(src, backbone, tmp_path / "cache", split="corpus", fields=["features"], progress=False, batch_size=8)
    failed = {os.path.basename(f["ident"]): f["reason"] for f in r.failed}
    decoded = {os.path.basename(i) for i in r.idents}
    forgiving = {"24_jpeg_flipped_bytes.jpg", "07_garbage_after_header.png"}
    assert set(ok) - forgiving <= decoded and decoded | set(failed) == set(ok) | set(bad)
    for n, why in bad.items():
        if n not in forgiving:
            assert n in failed and why in failed[n], (n, failed.get(n))
    assert np.isfinite(r.array("features")).all()


def test_fifo_in_a_file_list_is_refused_without_reading(tmp_path):
    os.mkfifo(tmp_path / "p.jpg")
    with pytest.raises(ImageDecodeError, match="is a FIFO"):
        open_image(tmp_path / "p.jpg")  # would block forever if it were opened
    with pytest.raises(ImageDecodeError, match="is a directory"):
        open_image(tmp_path)


def test_exif_orientation_is_honoured(tmp_path, photos):
    photo = photos["flower.jpg"].resize((300, 200))
    (tmp_path / "r.jpg").write_bytes(_exif_rotated(photo))
    (tmp_path / "u.jpg").write_bytes(_jpeg(photo.transpose(Image.Transpose.ROTATE_270)))
    rotated, upright = open_image(tmp_path / "r.jpg"), open_image(tmp_path / "u.jpg")
    assert rotated.size == upright.size == (200, 300)
    diff = np.abs(np.asarray(rotated, np.float32) - np.asarray(upright, np.float32)).mean()
    assert diff < 4.0  # same picture (JPEG noise only); unrotated it would not even have this shape


def test_decompression_bomb_is_reported_then_refused(tmp_path, photos, monkeypatch, caplog):
    big = photos["china.jpg"].resize((64, 48))  # 3072 pixels
    (tmp_path / "big.png").write_bytes(_png(big))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)  # over the limit, under twice it
    with caplog.at_level(logging.WARNING, logger="tagood"):
        img = open_image(tmp_path / "big.png")
    assert img.size == (64, 48)
    line = [r.getMessage() for r in caplog.records if "decompression-bomb" in r.getMessage()]
    assert len(line) == 1 and "big.png" in line[0] and "3072 pixels" in line[0] and "\n" not in line[0]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # over twice the limit: refused, as PIL does
    with pytest.raises(ImageDecodeError, match="decompression-bomb guard"):
        open_image(tmp_path / "big.png")


def test_nan_float_tiff_is_read_with_a_warning_or_refused(tmp_path, photos, caplog):
    photo = photos["flower.jpg"].resize((64, 48))
    Image.fromarray(_nan_float(photo, 0.5), "F").save(tmp_path / "half.tif")
    with caplog.at_level(logging.WARNING, logger="tagood"), warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # numpy's "invalid value encountered in cast" was all one saw
        img = data.FilesSource([tmp_path / "half.tif"]).load(0)
    a = np.asarray(img)
    assert a[:24].max() == 0 and a[24:].max() > 0  # the finite half keeps its picture (it was all black before)
    assert "half.tif: 1536 of 3072 pixels are NaN or infinite" in caplog.text
    Image.fromarray(np.full((4, 4), np.inf, np.float32), "F").save(tmp_path / "inf.tif")
    with pytest.raises(ImageDecodeError, match="inf.tif: a floating-point image whose every pixel is NaN or infinite"):
        open_image(tmp_path / "inf.tif")


def test_damaged_tiff_tags_print_nothing_to_stderr(tmp_path, photos):
    """Pillow's TIFF reader warns on stderr about a truncated tag block; the decode fails with a reason naming the
    file, so nothing else is printed (a run over many such files printed two lines each)."""
    import subprocess
    import sys

    b = io.BytesIO()
    photos["china.jpg"].resize((30, 20)).save(b, "TIFF", compression="tiff_deflate", description="helloworld")
    (tmp_path / "cut.tif").write_bytes(b.getvalue()[:-200])  # the tag block at the end is cut
    code = ("import sys; from tagood.data.decode import open_image, ImageDecodeError\n"
            "try:\n    open_image(sys.argv[1])\nexcept ImageDecodeError as e:\n    print(e)")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "cut.tif")], capture_output=True, text=True,
                       timeout=120, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert r.returncode == 0 and "cannot decode" in r.stdout and "cut.tif" in r.stdout, r.stdout
    assert r.stderr == "", r.stderr
