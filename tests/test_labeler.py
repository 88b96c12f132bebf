"""The report labeler: CheXpert conventions on hand-labelled sentences, and agreement with the
IU X-ray MeSH annotations above a floor per observation (so regressions fail)."""

from __future__ import annotations

import numpy as np
import pytest

from mavilt_jax.data import labels as L
from mavilt_jax.evaluation import iu_mesh, labeler

P, N, U, B = L.POSITIVE, L.NEGATIVE, L.UNCERTAIN, L.ABSENT

# (report, {observation: expected state}); observations not listed must be blank, except
# "No Finding", which is checked when listed.
HAND_LABELLED = [
    ("The heart is normal in size. No pleural effusion or pneumothorax.",
     {"Cardiomegaly": N, "Pleural Effusion": N, "Pneumothorax": N, "No Finding": P}),
    ("Mild cardiomegaly. Small left pleural effusion.",
     {"Cardiomegaly": P, "Pleural Effusion": P, "No Finding": B}),
    ("Possible right lower lobe pneumonia. No pneumothorax.",
     {"Pneumonia": U, "Pneumothorax": N, "No Finding": B}),
    ("Pneumothorax cannot be excluded.", {"Pneumothorax": U, "No Finding": B}),
    ("Left basilar atelectasis. Pacemaker in place.",
     {"Atelectasis": P, "Support Devices": P, "No Finding": B}),
    # Support Devices does not block No Finding.
    ("Right PICC line tip in the SVC. Lungs are clear.", {"Support Devices": P, "No Finding": P}),
    # Aggregation: positive beats negative across mentions.
    ("No effusion on the right. Small left pleural effusion.", {"Pleural Effusion": P}),
    # Uncertain beats negative.
    ("No large effusion. Questionable small left effusion.", {"Pleural Effusion": U}),
    ("There is no evidence of pulmonary edema. Healed left rib fractures.",
     {"Edema": N, "Fracture": P, "No Finding": B}),
    # A normal statement covers the structures it names.
    ("Cardiomediastinal silhouette is within normal limits.",
     {"Enlarged Cardiomediastinum": N, "No Finding": P}),
    ("Heart size and cardiomediastinal silhouette are within normal limits.",
     {"Cardiomegaly": N, "Enlarged Cardiomediastinum": N, "No Finding": P}),
    # A hedge after the mention, or inside it.
    ("A 12 mm nodular density in the lingula may represent a nodule.", {"Lung Lesion": U}),
    ("The heart may be mildly enlarged.", {"Cardiomegaly": U}),
    ("Enlargement of the cardiac silhouette. Small nodule in the left lung.",
     {"Cardiomegaly": P, "Lung Lesion": P}),
    # A calcified nodule is a healed granuloma, not a lung lesion.
    ("Scattered calcified nodules compatible with old granulomatous disease.", {"No Finding": P}),
    ("Pericardial effusion is not excluded.", {"No Finding": P}),
    ("Heart size is not enlarged. Patchy opacity in the right base, which may represent "
     "consolidation.", {"Cardiomegaly": N, "Lung Opacity": P, "Consolidation": U}),
    ("Left pleural thickening. Widened mediastinum.",
     {"Pleural Other": P, "Enlarged Cardiomediastinum": P}),
    ("Small hydropneumothorax.", {"Pneumothorax": P, "Pleural Effusion": P}),
    ("", {"No Finding": P}),
]


@pytest.mark.parametrize("text,expected", HAND_LABELLED)
def test_hand_labelled(text, expected):
    vec = labeler.label_report(text)
    assert vec.dtype == np.int8 and vec.shape == (L.NUM_OBSERVATIONS,)
    for name, state in expected.items():
        assert int(vec[L.INDEX[name]]) == state, (name, labeler.annotate(text))
    for name in L.OBSERVATIONS:
        if name not in expected and name != "No Finding":
            assert int(vec[L.INDEX[name]]) == B, (name, labeler.annotate(text))


def test_batch_equals_single():
    texts = [t for t, _ in HAND_LABELLED]
    batch = labeler.label_reports(texts)
    np.testing.assert_array_equal(batch, np.stack([labeler.label_report(t) for t in texts]))


def test_mesh_reference_mapping():
    ref = iu_mesh.mesh_reference("Cardiomegaly;Hydropneumothorax;Calcified Granuloma")
    assert set(np.flatnonzero(ref)) == {L.INDEX[n] for n in ("Cardiomegaly", "Pneumothorax", "Pleural Effusion")}
    assert iu_mesh.mesh_reference("normal")[L.INDEX["No Finding"]]
    assert not iu_mesh.mesh_reference("normal;Cardiomegaly")[L.INDEX["No Finding"]]
    # A round or nodular density is a lesion; a plain one is not.
    assert iu_mesh.mesh_reference("Density", "Density/lung/hilum/left/round")[L.INDEX["Lung Lesion"]]
    assert not iu_mesh.mesh_reference("Density", "Density/lung/base/left")[L.INDEX["Lung Lesion"]]
    # Qualified terms come from the MeSH cell: an enlarged cardiac shadow is cardiomegaly.
    assert iu_mesh.mesh_reference("Cardiac Shadow", "Cardiac Shadow/enlarged/mild")[L.INDEX["Cardiomegaly"]]
    assert not iu_mesh.mesh_reference("Cardiac Shadow", "Cardiac Shadow/normal")[L.INDEX["Cardiomegaly"]]


def test_mesh_reference_is_the_builder_map(shared_data):
    """The benchmark's reference and the IU X-ray builder's labels agree on every observation but
    No Finding, which the reference takes strictly ("normal" alone)."""
    from mavilt_jax.data import reports

    rows = iu_mesh.load_iu_reports(shared_data / "iu_xray" / "indiana_reports.csv")
    ref = np.stack([iu_mesh.mesh_reference(r["Problems"], r["MeSH"]) for r in rows])
    built = np.stack([reports.labels_from_mesh(r["MeSH"].split(";")) == L.POSITIVE for r in rows])
    other = [i for i in range(L.NUM_OBSERVATIONS) if i != L.INDEX["No Finding"]]
    np.testing.assert_array_equal(ref[:, other], built[:, other])
    normal = np.array([r["Problems"].strip() == "normal" for r in rows])
    np.testing.assert_array_equal(ref[:, L.INDEX["No Finding"]], normal)


# F1 floors vs MeSH (prediction = positive or uncertain), a little under what the labeler reaches
# (printed by benchmarks/eval_labeler_iu.py), so that a regression fails.
F1_FLOORS = {
    "No Finding": 0.66,
    "No Finding*": 0.94,
    "Cardiomegaly": 0.92,
    "Lung Opacity": 0.87,
    "Lung Lesion": 0.76,
    "Edema": 0.76,
    "Consolidation": 0.82,
    "Atelectasis": 0.88,
    "Pneumothorax": 0.80,
    "Pleural Effusion": 0.87,
    "Fracture": 0.79,
    "Support Devices": 0.82,
}


def test_agreement_with_iu_xray_mesh(shared_data):
    table = iu_mesh.compare_with_mesh(shared_data / "iu_xray" / "indiana_reports.csv")
    assert next(iter(table.values()))["studies"] > 3500
    failures = {name: round(table[name]["f1"], 3) for name, floor in F1_FLOORS.items()
                if table[name]["f1"] < floor}
    assert not failures, failures
    # F1 is computed from the counts it reports.
    row = table["Cardiomegaly"]
    assert row["f1"] == pytest.approx(2 * row["tp"] / (2 * row["tp"] + row["fp"] + row["fn"]))


def test_agrees_with_synthetic_generator_labels():
    """On generated studies the labeler reproduces the generator's 14 labels on every study."""
    from mavilt_jax.data import phantoms

    studies = [phantoms.generate_study(seed=7, index=i, resolution=32) for i in range(300)]
    predicted = labeler.label_reports(s["findings"] + " " + s["impression"] for s in studies)
    expected = np.stack([np.asarray(s["labels"], np.int8) for s in studies])
    disagreeing = [(studies[j]["study_id"], [L.OBSERVATIONS[i] for i in np.flatnonzero(predicted[j] != expected[j])])
                   for j in np.flatnonzero((predicted != expected).any(axis=1))]
    assert not disagreeing, disagreeing[:5]
    # The generated set exercises all three mention states.
    assert {P, N, U} <= set(np.unique(predicted).tolist())
