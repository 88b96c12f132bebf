"""Report text processing, checked on hand-made reports and on the real IU X-ray report XMLs
against the same reports as published in indiana_reports.csv (an independent export)."""

from __future__ import annotations

import csv
import re
import tarfile

import numpy as np
import pytest

from mavilt_jax.data import labels as L
from mavilt_jax.data import reports

MIMIC_REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with new onset ascites  // eval for infection

 COMPARISON:  ___

 FINDINGS:

 There is no focal consolidation, pleural effusion or pneumothorax.  Bilateral
 nodular opacities that most likely represent nipple shadows. Note: the
 cardiomediastinal silhouette is normal.

 Impression: No acute cardiopulmonary process.

 NOTIFICATION:  Dr. ___ was paged.
"""


def test_mimic_sections_span_lines_and_stop_at_the_next_header():
    s = reports.parse_mimic_report(MIMIC_REPORT)
    assert s.findings == (
        "There is no focal consolidation, pleural effusion or pneumothorax. Bilateral nodular "
        "opacities that most likely represent nipple shadows. Note: the cardiomediastinal silhouette is normal."
    )
    assert s.impression == "No acute cardiopulmonary process."  # the notification is not in it
    assert s.indication == "XXXXF with new onset ascites // eval for infection"
    assert s.comparison == "XXXX"
    assert s.usable


@pytest.mark.parametrize(
    "text, findings, impression",
    [
        ("FINDINGS AND IMPRESSION: Normal chest.\n", "Normal chest.", ""),
        ("findings: Lungs clear.\nconclusion: Normal.", "Lungs clear.", "Normal."),
        ("IMPRESSIONS:\n 1. Small left effusion.\n 2. No pneumothorax.", "", "1. Small left effusion. 2. No pneumothorax."),
        ("FINDINGS: A.\nIMPRESSION: B.\nFINDINGS: C.", "A. C.", "B."),
        ("PA and lateral views of the chest. Lungs are clear.", "", ""),
    ],
)
def test_mimic_header_variants(text, findings, impression):
    s = reports.parse_mimic_report(text)
    assert (s.findings, s.impression) == (findings, impression)
    assert s.usable == bool(findings or impression)


def test_deid_rule_is_one_rule_for_both_datasets():
    iu = "There are no XXXX of a pleural effusion. Inferior XXXX XXXX XXXX. Normal chest x-XXXX."
    mimic = "Dr. ___ was told at ___ by ___ ___ on the phone."
    assert reports.clean_text(iu) == "There are no XXXX of a pleural effusion. Inferior XXXX. Normal chest x-XXXX."
    assert reports.clean_text(mimic) == "Dr. XXXX was told at XXXX by XXXX on the phone."
    assert reports.clean_text(iu, "remove") == "There are no of a pleural effusion. Inferior. Normal chest x-."
    assert reports.clean_text(mimic, "remove") == "Dr. was told at by on the phone."
    assert reports.clean_text(mimic, "keep") == mimic
    # Roman numerals, "x-ray" and ordinary capitals are not placeholders.
    assert reports.clean_text("Stage XII; x-ray; XXX-L") == "Stage XII; x-ray; XXX-L"
    with pytest.raises(ValueError, match="deid"):
        reports.clean_text("a", "mask")  # type: ignore[arg-type]


def test_whitespace_normalisation():
    assert reports.normalize_whitespace("  Lungs\n\n are   clear .\tNo effusion ,  ok  ") == "Lungs are clear. No effusion, ok"


def test_select_text():
    assert reports.select_text("F.", "I.", "findings") == "F."
    assert reports.select_text("F.", "I.", "impression") == "I."
    assert reports.select_text("F.", "I.", "both") == "F. I."
    assert reports.select_text("", "I.", "both") == "I."
    assert reports.select_text("", "I.", "findings") == "I."
    assert reports.select_text("", "I.", "findings", fallback=False) == ""
    assert reports.select_text("F.", "", "impression") == "F."
    with pytest.raises(ValueError, match="section"):
        reports.select_text("F.", "I.", "summary")  # type: ignore[arg-type]


def test_labels_from_mesh_by_hand():
    def positives(terms):
        lab = reports.labels_from_mesh(terms)
        assert lab.dtype == np.int8 and lab.shape == (14,)
        assert set(np.unique(lab)) <= {L.POSITIVE, L.ABSENT}
        return {L.OBSERVATIONS[i] for i in np.flatnonzero(lab == L.POSITIVE)}

    assert positives(["normal"]) == {"No Finding"}
    assert positives(["Cardiomegaly/borderline", "Pulmonary Artery/enlarged"]) == {"Cardiomegaly"}
    assert positives(["Cardiac Shadow/enlarged/mild", "Thickening/pleura/right"]) == {"Cardiomegaly", "Pleural Other"}
    assert positives(["Hydropneumothorax/right", "Catheters, Indwelling"]) == {
        "Pneumothorax", "Pleural Effusion", "Support Devices"
    }  # fmt: skip
    assert positives(["normal", "Opacity/lung"]) == {"Lung Opacity"}  # No Finding withdrawn
    assert positives(["No Indexing"]) == set()
    assert positives(["Calcified Granuloma/lung/upper lobe/right"]) == set()
    # A round or nodular opacity/density is a lesion as well; a plain lung density only an opacity.
    assert positives(["Density/lung/hilum/left/round"]) == {"Lung Opacity", "Lung Lesion"}
    assert positives(["Opacity/nodular"]) == {"Lung Opacity", "Lung Lesion"}
    assert positives(["Density/lung/base/left"]) == {"Lung Opacity"}
    assert positives(["Mediastinum/prominent"]) == {"Enlarged Cardiomediastinum"}
    assert positives(["Cavitation/lung/apex/right"]) == set()  # see mavilt_jax/data/mesh_terms.py
    assert positives(["PLEURAL EFFUSION/right"]) == {"Pleural Effusion"}  # case is ignored


def test_parse_iu_xml_fields():
    xml = """<?xml version="1.0" encoding="utf-8"?><eCitation><IUXRId id="7"/><MedlineCitation><Article>
      <Abstract><AbstractText Label="COMPARISON">None.</AbstractText>
      <AbstractText Label="INDICATION">XXXX-year-old male.</AbstractText>
      <AbstractText Label="FINDINGS">Heart size
         normal. No XXXX XXXX.</AbstractText><AbstractText Label="IMPRESSION"/></Abstract></Article>
      </MedlineCitation><MeSH><major>Opacity/lung/base</major><major>Nodule</major><automatic>opacity</automatic></MeSH>
      <parentImage id="CXR7_IM-2263-1001"/><parentImage id="CXR7_IM-2263-2001"/></eCitation>"""
    rep = reports.parse_iu_xml(xml)
    assert rep.uid == "7"
    assert rep.sections.findings == "Heart size normal. No XXXX."
    assert rep.sections.impression == ""
    assert rep.sections.indication == "XXXX-year-old male."
    assert rep.mesh_major == ("Opacity/lung/base", "Nodule") and rep.problems == ("Opacity", "Nodule")
    assert rep.mesh_automatic == ("opacity",)
    assert rep.image_ids == ("CXR7_IM-2263-1001", "CXR7_IM-2263-2001")
    with pytest.raises(ValueError, match="XML"):
        reports.parse_iu_xml("<eCitation><IUXRId")
    with pytest.raises(ValueError, match="IUXRId"):
        reports.parse_iu_xml("<eCitation/>")


@pytest.fixture(scope="module")
def iu_real(shared_data):
    tgz = shared_data / "iu_xray" / "NLMCXR_reports.tgz"
    parsed = {}
    with tarfile.open(tgz) as tf:
        for member in tf.getmembers():
            if member.isfile() and member.name.endswith(".xml"):
                rep = reports.parse_iu_xml(tf.extractfile(member).read(), deid="keep")
                assert member.name == f"ecgen-radiology/{rep.uid}.xml"
                parsed[rep.uid] = rep
    with open(shared_data / "iu_xray" / "indiana_reports.csv", newline="") as f:
        rows = {row["uid"]: row for row in csv.DictReader(f)}
    return parsed, rows


def test_real_iu_xml_sections_match_the_csv_export(iu_real):
    parsed, rows = iu_real
    assert len(parsed) == 3955 and len(rows) == 3851
    # The CSV holds exactly the reports that name images.
    assert set(rows) == {uid for uid, rep in parsed.items() if rep.image_ids}
    for uid, row in rows.items():
        sections = parsed[uid].sections
        assert sections.findings == reports.clean_text(row["findings"], "keep"), uid
        assert sections.impression == reports.clean_text(row["impression"], "keep"), uid
        if row["indication"] != "#NAME?":  # a spreadsheet artefact in the CSV, not in the XML
            assert sections.indication == reports.clean_text(row["indication"], "keep"), uid
        # MeSH terms and their heads ("Problems"); the CSV keeps a trailing space of the source.
        assert parsed[uid].mesh_major == tuple(t.strip() for t in row["MeSH"].split(";")), uid
        assert parsed[uid].problems == tuple(t.strip() for t in row["Problems"].split(";")), uid
    usable = sum(parsed[uid].sections.usable for uid in rows)
    assert usable == sum(bool(r["findings"].strip() or r["impression"].strip()) for r in rows.values())


def test_real_iu_deid_placeholders(iu_real):
    parsed, _ = iu_real
    for rep in parsed.values():
        raw = rep.sections.findings + " " + rep.sections.impression
        # A simpler rule on text without spaces: placeholder runs collapse to one / disappear.
        squeezed = re.sub(r"\s", "", raw)
        assert re.sub(r"\s", "", reports.clean_text(raw)) == re.sub(r"(XXXX)+", "XXXX", squeezed), rep.uid
        assert re.sub(r"\s", "", reports.clean_text(raw, "remove")) == squeezed.replace("XXXX", ""), rep.uid


def test_real_iu_labels_from_mesh(iu_real):
    _, rows = iu_real
    normal = [r for r in rows.values() if r["Problems"] == "normal"]
    assert len(normal) == 1379
    for row in normal:
        np.testing.assert_array_equal(
            reports.labels_from_mesh(row["MeSH"].split(";")),
            np.where(np.arange(14) == L.INDEX["No Finding"], L.POSITIVE, L.ABSENT),
        )
    # Counts of observations against a direct count of the CSV's Problems column.
    full = np.stack([reports.labels_from_mesh(r["MeSH"].split(";")) for r in rows.values()])
    count = lambda head: sum(head in r["Problems"].split(";") for r in rows.values())
    assert (full[:, L.INDEX["Pleural Effusion"]] == L.POSITIVE).sum() >= count("Pleural Effusion")
    assert (full[:, L.INDEX["Atelectasis"]] == L.POSITIVE).sum() == count("Pulmonary Atelectasis")
    assert (full[:, L.INDEX["Pneumonia"]] == L.POSITIVE).sum() == count("Pneumonia")
    # Heads alone (the Problems column) give a subset of what the qualified terms give.
    heads = np.stack([reports.labels_from_mesh(r["Problems"].split(";")) for r in rows.values()])
    assert np.all((heads == L.POSITIVE) <= (full == L.POSITIVE))
