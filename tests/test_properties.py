"""Property-based tests (hypothesis) of every reader of user input: report text and XML,
de-identification, the labeler, MeSH terms, config variants, predictions JSONL and image bytes.

Each reader gets arbitrary, empty, huge and adversarial inputs and must either return a value
that keeps its invariants or raise one of its documented errors. The "ci" profile (default) runs
a fixed, moderate number of examples per reader with a derandomized seed, so CI is reproducible;
``HYPOTHESIS_PROFILE=dev`` runs ten times as many with fresh randomness.
"""

from __future__ import annotations

import io
import json
import os
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mavilt_jax.data import labels as L
from mavilt_jax.data import reports

settings.register_profile("ci", deadline=None, derandomize=True, database=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("dev", deadline=None, suppress_health_check=[HealthCheck.too_slow])
_PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
settings.load_profile(_PROFILE)


def examples(n: int):
    """``n`` examples per reader in CI, ten times as many in the dev profile."""
    return settings(max_examples=n * (10 if _PROFILE == "dev" else 1))


# ==== report text =================================================================================

_HEADER_WORDS = ["FINDINGS", "Findings", "findings", "IMPRESSION", "Impression", "CONCLUSION", "INDICATION",
                 "HISTORY", "COMPARISON", "FINDINGS AND IMPRESSION", "Impression/findings", "Note", "WET READ",
                 "Technique", "TECHNIQUE", "SUMMARY", "Addendum", "X", "A"]
_PIECES = st.one_of(
    st.sampled_from(_HEADER_WORDS).map(lambda h: f"{h}:"),
    st.sampled_from(["___", "XXXX", "XXXX XXXX", "x-ray", "\n", "\r\n", " ", "\t", ".", ",", ":", "No effusion.",
                     "Heart size is normal.", "\u00a0", "\u2028", "II", "XXX", "__"]),
    st.text(max_size=20),
)
REPORT_TEXT = st.one_of(st.text(max_size=300), st.lists(_PIECES, max_size=40).map("".join))


def _is_subsequence(needle: str, haystack: str) -> bool:
    it = iter(haystack)
    return all(ch in it for ch in needle)


def _visible(text: str) -> str:
    return "".join(text.split())


@examples(150)
@given(REPORT_TEXT)
@example("FINDINGS: a\nIMPRESSION: b\nFINDINGS: c")
@example("\r\nFINDINGS:\rIMPRESSION:")
def test_mimic_sections_are_a_subsequence_of_the_report(text):
    raw = reports.split_mimic_sections(text)
    for body in raw.values():
        for piece in body.split("\n"):
            assert piece in text or not piece
    parsed = reports.parse_mimic_report(text, deid="keep")
    for field in ("findings", "impression", "indication", "comparison"):
        value = getattr(parsed, field)
        assert isinstance(value, str) and value == reports.normalize_whitespace(value)
        # Cleaning only drops whitespace: what is visible of a section comes from the report, in order.
        assert _is_subsequence(_visible(value), _visible(text))
    assert parsed.usable == bool(parsed.findings or parsed.impression)


_DEID_TEXT = st.one_of(st.text(alphabet=st.sampled_from(list("X_ x.,a\n\t:-")), max_size=60), st.text(max_size=80))


@examples(400)
@given(_DEID_TEXT, st.sampled_from(["token", "remove", "keep"]))
@example("X___", "token")
@example("XXX XXXX", "token")
def test_deidentification_is_idempotent_and_leaves_no_placeholder(text, mode):
    once = reports.clean_text(text, mode)
    assert reports.clean_text(once, mode) == once
    if mode == "remove":
        assert not reports._PLACEHOLDER_RUN.search(once)
    if mode == "token":
        assert all(m.group(0) == reports.DEID_TOKEN for m in reports._PLACEHOLDER_RUN.finditer(once))
    if mode == "keep":
        assert once == reports.normalize_whitespace(text)


def _iu_xml(uid, sections, mesh, images):
    from xml.sax.saxutils import escape, quoteattr

    parts = [f"<eCitation><IUXRId id={quoteattr(uid)}/><MedlineCitation><Article><Abstract>"]
    parts += [f"<AbstractText Label={quoteattr(k)}>{escape(v)}</AbstractText>" for k, v in sections.items()]
    parts.append("</Abstract></Article></MedlineCitation><MeSH>")
    parts += [f"<major>{escape(m)}</major>" for m in mesh]
    parts.append("</MeSH>")
    parts += [f"<parentImage id={quoteattr(i)}/>" for i in images]
    return "".join(parts) + "</eCitation>"


# Text an XML 1.0 document can carry (no control characters, no surrogates).
_XML_TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\ufffe\uffff")
                    | st.sampled_from("\n\t"), max_size=60)


@examples(200)
@given(uid=_XML_TEXT.filter(lambda s: s.strip()), findings=_XML_TEXT, impression=_XML_TEXT,
       mesh=st.lists(_XML_TEXT, max_size=5), images=st.lists(_XML_TEXT.filter(bool), max_size=3))
def test_iu_xml_sections_round_trip(uid, findings, impression, mesh, images):
    xml = _iu_xml(uid, {"FINDINGS": findings, "IMPRESSION": impression}, mesh, images)
    report = reports.parse_iu_xml(xml.encode("utf-8"))
    assert report.sections.findings == reports.clean_text(findings)
    assert report.sections.impression == reports.clean_text(impression)
    assert report.mesh_major == tuple(m.strip() for m in mesh if m.strip())
    # XML normalises line ends in attribute values; ids are otherwise as written.
    assert len(report.image_ids) == len(images)


@examples(300)
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300),
                 st.lists(st.sampled_from(["<", ">", "/", "eCitation", "IUXRId", " id='1'", "AbstractText",
                                           "<!DOCTYPE a [<!ENTITY e 'x'>]>", "&e;", "<?xml version='1.0' encoding='utf-16'?>",
                                           "\x00", "\ud800", "MeSH", "major", "]]>", "<![CDATA["]), max_size=20).map("".join)))
def test_iu_xml_rejects_anything_malformed_with_value_error(data):
    try:
        report = reports.parse_iu_xml(data)
    except ValueError:
        return
    assert report.uid and isinstance(report.sections, reports.ReportSections)


# ==== labeler and MeSH ============================================================================

def _labeler():
    from mavilt_jax.evaluation import labeler

    return labeler


_LABELER_WORDS = ["no", "not", "without", "possible", "cannot be excluded", "effusion", "pneumothorax", "heart",
                  "size", "is", "normal", "enlarged", "cardiomegaly", "opacity", "tube", "fracture", "edema", "?",
                  ".", ",", ";", "but", "likely", "mediastinum", "unremarkable", "nodule", "XXXX", "\n", "consolidation",
                  "pneumonia", "atelectasis", "pleural thickening", "hydropneumothorax", "calcified nodule"]
LABELER_TEXT = st.one_of(st.text(max_size=200), st.lists(st.sampled_from(_LABELER_WORDS) | st.text(max_size=8),
                                                         max_size=40).map(" ".join))
_PATHOLOGIES = [i for name, i in L.INDEX.items() if name not in ("No Finding", "Support Devices")]


def _check_label_vector(vec, allowed=(L.POSITIVE, L.NEGATIVE, L.UNCERTAIN, L.ABSENT)):
    assert vec.shape == (L.NUM_OBSERVATIONS,) and vec.dtype == np.int8
    assert set(vec.tolist()) <= set(allowed)
    nf = vec[L.INDEX["No Finding"]]
    assert nf in (L.POSITIVE, L.ABSENT)
    if nf == L.POSITIVE:
        assert not np.isin(vec[_PATHOLOGIES], (L.POSITIVE, L.UNCERTAIN)).any()


@examples(60)
@given(st.lists(LABELER_TEXT, min_size=1, max_size=4))
def test_labeler_states_are_allowed_and_batching_changes_nothing(texts):
    labeler = _labeler()
    batch = labeler.label_reports(texts)
    assert batch.shape == (len(texts), L.NUM_OBSERVATIONS)
    for text, row in zip(texts, batch):
        vec = labeler.label_report(text)
        _check_label_vector(vec)
        np.testing.assert_array_equal(vec, row)


MESH_TERM = st.one_of(st.text(max_size=40), st.lists(
    st.sampled_from(["Cardiomegaly", "Opacity", "lung", "round", "Mediastinum", "enlarged", "normal", "No Indexing",
                     "Cardiac Shadow", "Density", "Pleural Effusion", "Hydropneumothorax", "Catheters, Indwelling",
                     " ", "", "CARDIOMEGALY", "nodular"]), max_size=4).map("/".join))


@examples(200)
@given(st.lists(MESH_TERM, max_size=8), st.randoms(use_true_random=False))
def test_mesh_labels_are_positive_or_absent_and_order_free(terms, rnd):
    vec = reports.labels_from_mesh(terms)
    _check_label_vector(vec, allowed=(L.POSITIVE, L.ABSENT))
    shuffled = list(terms)
    rnd.shuffle(shuffled)
    np.testing.assert_array_equal(reports.labels_from_mesh(shuffled), vec)
    # MeSH matching ignores case (ASCII terms; Unicode case folding may change length).
    if all(t.isascii() for t in terms):
        np.testing.assert_array_equal(reports.labels_from_mesh([t.upper() for t in terms]), vec)
    heads = reports.mesh_problems(terms)
    assert all(isinstance(h, str) and h == h.strip() for h in heads)


# ==== config variants =============================================================================

_DEFAULTS = dict(runlocal=False, model="tiny", steps=10, lr=0.1, recon=float)


@examples(300)
@given(st.one_of(st.text(max_size=60), st.lists(st.one_of(
    st.sampled_from(["runlocal", "model", "steps", "lr", "recon", "nope", ""]),
    st.tuples(st.sampled_from(["runlocal", "model", "steps", "lr", "recon"]),
              st.one_of(st.text(max_size=8), st.sampled_from(["1", "0", "true", "False", "yes", "nan", "inf", "1e3",
                                                              "-5", "1_0", " 3", "0x10"]))).map("=".join)),
    max_size=6).map(",".join)))
def test_config_variants_parse_or_raise_value_error(arg):
    from configs import common

    try:
        parsed = common.parse_arg(arg, **_DEFAULTS)
    except ValueError:
        return
    assert set(parsed.keys()) == set(_DEFAULTS)
    assert isinstance(parsed.runlocal, bool)
    assert isinstance(parsed.steps, int) and isinstance(parsed.lr, float) and isinstance(parsed.model, str)
    assert parsed.recon is None or isinstance(parsed.recon, float)
    # Every item the variant string names is reflected in the result.
    for item in filter(None, arg.split(",")):
        key, has_value, _ = item.partition("=")
        if not has_value:
            assert parsed[key] is True


# ==== predictions JSONL ===========================================================================

_JSON_VALUE = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
                           lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
                           max_leaves=6)
_FIELDS = ["task", "study_id", "reference", "generation", "question", "answer", "prediction", "p_yes",
           "question_type", "answer_type", "generated_image", "real_image", "report", "requested_labels",
           "classifier_probs", "reference_labels", "generated_labels"]
_RECORD = st.fixed_dictionaries({}, optional={
    **{f: _JSON_VALUE for f in _FIELDS},
    "task": st.sampled_from(["vqa", "report_generation", "report_to_image", "other"]) | _JSON_VALUE,
    "study_id": st.text(max_size=4) | st.integers(0, 3),
    "answer": st.sampled_from(["yes", "no", "left", ""]) | _JSON_VALUE,
    "prediction": st.sampled_from(["yes", "no", "Yes."]) | _JSON_VALUE,
    "p_yes": st.floats(0, 1) | _JSON_VALUE,
    "reference_labels": st.lists(st.sampled_from([1, 0, -1, -2]), min_size=14, max_size=14) | _JSON_VALUE,
})
_LINE = st.one_of(_RECORD.map(lambda r: json.dumps(r).encode()), st.binary(max_size=40),
                  _JSON_VALUE.map(lambda v: json.dumps(v).encode()), st.just(b""), st.just(b"\xff\xfe{"))


@examples(100)
@given(st.lists(_LINE, max_size=12))
@example([b"[" * 100000, b'{"task": "vqa", "study_id": "a", "question": "q", "answer": "yes", "prediction": "yes"}'])
@example([b'{"task": "vqa", "study_id": "a", "question": "q", "answer": 5, "prediction": []}'])
def test_predictions_jsonl_reads_or_skips_every_line(tmp_path_factory, lines):
    from mavilt_jax.evaluation import records, suite

    path = tmp_path_factory.getbasetemp() / "predictions.jsonl"  # rewritten by every example
    path.write_bytes(b"\n".join(lines))
    try:
        rs = records.read_records(path)
    except ValueError as e:
        assert "no usable records" in str(e)
        return
    nonblank = [i + 1 for i, line in enumerate(path.read_bytes().split(b"\n")) if line.strip()]
    assert rs.total + len(rs.skipped) == len(nonblank)
    assert sorted(s["line"] for s in rs.skipped) == [s["line"] for s in rs.skipped]
    for task, rows in rs.by_task.items():
        for r in rows:
            assert all(isinstance(r[k], str) for k in records.REQUIRED[task] if k != "study_id")
    cfg = suite.EvalConfig(resamples=3, fid_extractors=(), meteor=False)
    if rs.by_task["vqa"]:
        out = suite.score_vqa(rs.by_task["vqa"], cfg)
        assert 0.0 <= out["metrics"]["accuracy"]["value"] <= 1.0
    if rs.by_task["report_generation"]:
        rows = rs.by_task["report_generation"]
        for field, text in (("reference_labels", "reference"), ("generated_labels", "generation")):
            if all(r.get(field) is not None for r in rows):  # labels given: the labeler is not run
                _check_given_labels(suite._labels_field(rows, field, text))


def _check_given_labels(labels):
    assert labels.dtype == np.int8 and set(np.unique(labels).tolist()) <= {1, 0, -1, -2}


# ==== image bytes =================================================================================

def _png(width, height, mode="L", bit_depth=8, color_type=0, data=None):
    """A PNG built by hand: IHDR may declare any size (a decompression bomb), IDAT holds ``data``."""

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(data or b"\x00" * 64)) + chunk(b"IEND", b"")


def _encode(image, fmt, **kw):
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _valid_images() -> dict[str, bytes]:
    from PIL import Image

    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (40, 30), np.uint8)
    palette = Image.fromarray(gray).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 3
    return {
        "gray_png": _encode(Image.fromarray(gray), "PNG"),
        "png16": _encode(Image.fromarray(rng.integers(0, 65536, (30, 40)).astype(np.uint16)), "PNG"),
        "png16_flat": _encode(Image.fromarray(np.full((20, 20), 1000, np.uint16)), "PNG"),
        "palette_png": _encode(palette, "PNG", transparency=3),
        "rgba_png": _encode(Image.fromarray(rng.integers(0, 256, (20, 25, 4), np.uint8), "RGBA"), "PNG"),
        "la_png": _encode(Image.fromarray(rng.integers(0, 256, (20, 25, 2), np.uint8), "LA"), "PNG"),
        "bilevel_png": _encode(Image.fromarray(gray > 128), "PNG"),
        "cmyk_jpeg": _encode(Image.fromarray(rng.integers(0, 256, (32, 24, 4), np.uint8), "CMYK"), "JPEG"),
        "rgb_jpeg": _encode(Image.fromarray(rng.integers(0, 256, (32, 48, 3), np.uint8)), "JPEG"),
        "one_pixel_png": _encode(Image.fromarray(np.zeros((1, 1), np.uint8)), "PNG"),
        "wide_png": _encode(Image.fromarray(np.zeros((1, 3000), np.uint8)), "PNG"),
    }


BAD_IMAGES = {
    "empty": b"",
    "bomb_png_100000x100000": _png(100000, 100000),
    "bomb_png_rgb16": _png(60000, 60000, bit_depth=16, color_type=2),
    "zero_size_png": _png(0, 0),
    "text": b"not an image at all\n",
    "png_signature_only": b"\x89PNG\r\n\x1a\n",
    "jpeg_soi_only": b"\xff\xd8\xff",
}


def _mutations():
    valid = list(_valid_images().values())
    cut = st.tuples(st.sampled_from(valid), st.floats(0, 1)).map(lambda t: t[0][: int(len(t[0]) * t[1])])
    flipped = st.tuples(st.sampled_from(valid), st.lists(st.tuples(st.floats(0, 0.999), st.integers(0, 255)),
                                                         min_size=1, max_size=6)).map(_flip)
    return st.one_of(st.binary(max_size=400), cut, flipped, st.sampled_from(list(BAD_IMAGES.values())))


def _flip(args):
    data, edits = args
    b = bytearray(data)
    for pos, value in edits:
        b[int(pos * len(b))] = value
    return bytes(b)


def _read_radiograph():
    from tfds_builders.radiographs import read_radiograph

    return read_radiograph


def _builder_errors():
    from PIL import Image

    return (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


@pytest.mark.parametrize("name", sorted(_valid_images()))
def test_builder_reads_every_kind_of_valid_image_at_the_declared_shape(tmp_path, name):
    path = tmp_path / "x.img"
    path.write_bytes(_valid_images()[name])
    pixels = _read_radiograph()(path, 16)
    assert pixels.shape == (16, 16, 1) and pixels.dtype == np.uint8


@pytest.mark.parametrize("name", sorted(BAD_IMAGES))
def test_builder_rejects_bad_images_with_documented_errors(tmp_path, name):
    path = tmp_path / "x.img"
    path.write_bytes(BAD_IMAGES[name])
    with pytest.raises(_builder_errors()):
        _read_radiograph()(path, 16)


@examples(200)
@given(_mutations())
def test_builder_image_reader_returns_the_declared_shape_or_a_documented_error(tmp_path_factory, data):
    path = tmp_path_factory.getbasetemp() / "x.img"  # rewritten by every example
    path.write_bytes(data)
    try:
        pixels = _read_radiograph()(path, 8)
    except _builder_errors():
        return
    assert pixels.shape == (8, 8, 1) and pixels.dtype == np.uint8


def test_builder_skips_and_counts_bad_images(tmp_path, caplog):
    from tfds_builders import radiographs

    studies = []
    for i, (name, data) in enumerate(sorted(BAD_IMAGES.items()) + sorted(_valid_images().items())):
        (tmp_path / f"{i}.img").write_bytes(data)
        studies.append({"study_id": name, "image_id": name, "image_path": str(tmp_path / f"{i}.img"), "findings": "",
                        "impression": "", "labels": np.full((L.NUM_OBSERVATIONS,), L.ABSENT, np.int8), "view": "PA"})
    with caplog.at_level("INFO"):
        kept = [key for key, _ in radiographs.radiograph_examples(studies, 16, "test", "train")]
    assert kept == sorted(_valid_images())
    assert f"kept {len(_valid_images())} studies, skipped {len(BAD_IMAGES)} (unreadable_image={len(BAD_IMAGES)})" in caplog.text


def _image_io():
    from mavilt_jax import image_io

    return image_io


@examples(200)
@given(_mutations())
def test_inference_image_reader_returns_the_declared_shape_or_image_error(data):
    image_io = _image_io()
    try:
        pixels = image_io.load_radiograph(data, 8)
    except image_io.ImageError:
        return
    assert pixels.shape[:2] == (8, 8) and pixels.dtype == np.uint8


@pytest.mark.parametrize("name", sorted(BAD_IMAGES))
def test_inference_image_reader_rejects_bad_images(name):
    image_io = _image_io()
    with pytest.raises(image_io.ImageError):
        image_io.load_radiograph(BAD_IMAGES[name], 8)


@pytest.mark.parametrize("name", sorted(BAD_IMAGES))
def test_vqgan_codes_turns_bad_images_into_usage_errors(tmp_path, name):
    from mavilt_jax import vqgan_codes

    path = tmp_path / "x.png"
    path.write_bytes(BAD_IMAGES[name])
    with pytest.raises(vqgan_codes.UsageError):
        vqgan_codes.read_image(str(path))
