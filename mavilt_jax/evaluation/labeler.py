"""A rule-based report labeler for the 14 CheXpert observations (clinical efficacy, real VQA).

Pipeline (spaCy, no statistical model, so nothing to download):
  ``spacy.blank("en")`` -> ``sentencizer`` -> ``entity_ruler`` (mention phrases of each observation,
  plus "normal" statements such as "heart size is normal") -> ``negex`` (negspacy, radiology
  negation termset) -> a second ``negex`` pass named ``uncertainty`` whose termset holds hedging
  cues ("possible", "cannot be excluded", ...), writing ``span._.uncertain``.

Mention -> state, following the CheXpert labeler (Irvin et al., AAAI 2019):
  * a "normal" statement -> negative; a negated mention -> negative; a hedged mention ->
    uncertain (hedging wins over negation: "cannot exclude" contains a negation word);
    otherwise positive;
  * across the mentions of one observation: positive > uncertain > negative; no mention -> blank;
  * "No Finding" is positive when no other observation except Support Devices is positive or
    uncertain, and blank otherwise.
The codes are those of :mod:`mavilt_jax.data.labels` (1, 0, -1, -2).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence

import numpy as np
import spacy
from negspacy.negation import Negex  # noqa: F401  (registers the "negex" factory)

from mavilt_jax.data import labels as L

_IGNORE = "_IGNORE"  # phrases that contain a mention word but are not the observation

# Mention phrases per observation (matched on lower-cased tokens). Where one phrase names two
# observations, the label lists both, separated by "|".
MENTIONS: dict[str, tuple[str, ...]] = {
    "Enlarged Cardiomediastinum": (
        "widened mediastinum", "mediastinal widening", "widening of the mediastinum",
        "enlarged mediastinum", "mediastinal enlargement", "enlarged cardiomediastinum",
        "cardiomediastinal enlargement", "prominent mediastinum", "mediastinum is widened",
        "mediastinum is enlarged", "widened mediastinal", "enlarged mediastinal",
    ),
    "Cardiomegaly": (
        "cardiomegaly", "enlarged heart", "heart enlargement", "cardiac enlargement",
        "enlarged cardiac silhouette", "enlargement of the cardiac silhouette",
        "enlarged cardiac", "cardiac silhouette is enlarged", "heart is enlarged",
        "heart size is enlarged", "heart is mildly enlarged", "heart size is mildly enlarged",
        "heart is moderately enlarged", "heart is markedly enlarged", "heart size is increased",
        "enlarged heart size", "increased heart size", "cardiac silhouette is mildly enlarged",
        "borderline heart size", "borderline cardiac size", "borderline cardiac enlargement",
        "borderline enlargement of the heart", "mildly enlarged heart", "prominent heart", "prominence of the cardiac silhouette",
    ),
    "Lung Opacity": (
        "opacity", "opacities", "opacification", "opacifications", "opacified", "infiltrate",
        "infiltrates", "infiltration", "infiltrations", "airspace disease", "air space disease",
        "airspace opacity", "air space opacity", "airspace opacities", "density", "densities",
        "haziness", "hazy", "increased markings", "reticular", "reticulonodular",
    ),
    "Lung Lesion": (
        "nodule", "nodules", "nodular", "nodular opacity", "nodular opacities", "nodular density",
        "nodular densities", "nodular opacification", "mass", "masses", "lesion", "lesions",
        "tumor", "tumors", "neoplasm", "carcinoma", "malignancy", "metastasis", "metastases",
        "metastatic disease", "cavitary lesion", "lump",
    ),
    "Edema": (
        "edema", "pulmonary edema", "interstitial edema", "chf", "heart failure",
        "vascular congestion", "pulmonary vascular congestion", "pulmonary congestion",
        "congestion", "vascular prominence", "indistinctness", "cephalization",
    ),
    "Consolidation": (
        "consolidation", "consolidations", "consolidative", "consolidated",
        "airspace consolidation",
    ),
    "Pneumonia": (
        "pneumonia", "pneumonias", "bronchopneumonia", "infection", "infectious process",
        "infectious", "pneumonitis",
    ),
    "Atelectasis": (
        "atelectasis", "atelectases", "atelectatic", "collapse", "collapsed",
        # Linear (plate-like) densities are the radiographic sign of subsegmental atelectasis.
        "linear density", "linear densities", "linear opacity", "linear opacities",
        "platelike atelectasis", "plate-like atelectasis", "discoid atelectasis",
    ),
    "Pneumothorax": (
        "pneumothorax", "pneumothoraces", "pneumothoraxes",
    ),
    "Pleural Effusion": (
        "pleural effusion", "pleural effusions", "effusion", "effusions", "pleural fluid",
        "blunting of the costophrenic angle", "blunting of the costophrenic angles",
        "blunting of the right costophrenic angle", "blunting of the left costophrenic angle",
        "blunted costophrenic angle", "blunted costophrenic angles",
        "costophrenic angle blunting", "costophrenic blunting",
    ),
    "Pneumothorax|Pleural Effusion": ("hydropneumothorax", "hydropneumothoraces"),
    "Pleural Other": (
        "pleural thickening", "pleural scarring", "pleural plaque", "pleural plaques",
        "pleural calcification", "pleural calcifications", "fibrothorax",
        "pleural-parenchymal scarring", "pleuroparenchymal scarring", "pleural-based scarring",
    ),
    "Fracture": ("fracture", "fractures", "fractured", "fx"),
    "Support Devices": (
        "pacemaker", "pacer", "icd", "defibrillator", "aicd", "catheter", "catheters",
        "central line", "central venous line", "central venous catheter", "picc", "picc line",
        "port", "port-a-cath", "portacath", "line tip", "tip", "leads", "lead",
        "endotracheal tube", "et tube", "ett", "nasogastric tube", "ng tube", "og tube",
        "feeding tube", "chest tube", "tracheostomy", "tube", "tubes", "drain", "drains",
        "sternotomy", "sternotomy wires", "median sternotomy", "wires", "wire", "clips",
        "surgical clips", "clip", "staples", "hardware", "stent", "stents", "valve replacement",
        "prosthetic valve", "valve prosthesis", "device", "devices", "support device",
        "fixation", "prosthesis", "arthroplasty", "cabg", "coil", "coils", "screws",
        "stimulator", "neurostimulator", "shunt", "shunt tubing", "monitor leads",
    ),
    _IGNORE: (
        "pericardial effusion", "lytic lesion", "lytic lesions", "bony lesion", "bone lesion",
        "osseous lesion", "sclerotic lesion", "breast mass", "soft tissue density",
        "soft tissue densities", "mass effect", "nipple shadow", "no acute", "granulomatous infection",
        "granulomatous disease",
        # Calcified nodules are healed granulomas, not the lesions CheXpert's class is about.
        "calcified nodule", "calcified nodules", "calcified nodular density",
        "calcified nodular densities", "calcified nodular opacity", "calcified nodular opacities",
    ),
}

_HEART = ["heart", "cardiac", "cardiomegaly"]
_CARDIOMEDIASTINAL = ["cardiomediastinal", "cardiomediastinum", "cardiopericardial"]
_MEDIASTINUM = ["mediastinum", "mediastinal"]
_NORMAL = ["normal", "unremarkable"]
_NOT_IN_GAP = ["enlarged", "enlargement", "but", "however", "although", "with", "not", "no",
               "except", "borderline", "upper", "mildly", "increased", "prominent"]


def _normal_patterns() -> list[dict]:
    """'Normal' statements: an anatomy anchor and a normality word within one clause."""
    gap = {"IS_PUNCT": False, "LOWER": {"NOT_IN": _NOT_IN_GAP}, "OP": "{0,6}"}
    short_gap = {"IS_PUNCT": False, "LOWER": {"NOT_IN": _NOT_IN_GAP}, "OP": "{0,4}"}
    patterns = []
    # The label is provisional: which observations a normal statement covers depends on every
    # anchor word inside it ("heart size and mediastinum are normal" covers two).
    for anchor, label in ((_HEART, "Cardiomegaly"),
                          (_CARDIOMEDIASTINAL, "Enlarged Cardiomediastinum"),
                          (_MEDIASTINUM, "Enlarged Cardiomediastinum")):
        anchor_tok = {"LOWER": {"IN": anchor}}
        normal_tok = {"LOWER": {"IN": _NORMAL}}
        patterns += [
            {"label": label, "id": "normal", "pattern": [anchor_tok, gap, normal_tok]},
            {"label": label, "id": "normal", "pattern": [normal_tok, short_gap, anchor_tok]},
            {"label": label, "id": "normal", "pattern": [
                anchor_tok, gap, {"LOWER": "not"}, {"LOWER": {"IN": ["enlarged", "widened"]}}]},
        ]
    # "enlargement of the heart", "heart size is moderately enlarged": a mention, not a normal
    # statement; the gap excludes negation words so that negex still sees them before the span.
    enlarged_tok = {"LOWER": {"IN": ["enlarged", "enlargement"]}}
    heart_tok = {"LOWER": {"IN": ["heart", "cardiac"]}}
    mention_gap = {"IS_PUNCT": False, "LOWER": {"NOT_IN": ["not", "no", "without", "normal"]},
                   "OP": "{0,4}"}
    patterns += [
        {"label": "Cardiomegaly", "id": "mention", "pattern": [heart_tok, mention_gap, enlarged_tok]},
        {"label": "Cardiomegaly", "id": "mention", "pattern": [
            enlarged_tok, {"LOWER": "of"}, {"LOWER": "the", "OP": "?"}, heart_tok]},
    ]
    return patterns


# Negation cues (radiology NegEx, after the CheXpert/NegBio rules). Hedged phrases that contain a
# negation word are pseudo-negations here, so that the uncertainty pass decides them.
_HEDGED_NEGATIONS = [
    "cannot be excluded", "can not be excluded", "cannot exclude", "can not exclude",
    "not be excluded", "not excluded", "not entirely excluded", "not completely excluded",
    "difficult to exclude", "cannot be ruled out", "can not be ruled out", "cannot rule out",
    "not ruled out", "not be ruled out", "not clearly excluded", "not certain", "not sure",
    "no definite change",
]
NEGATION_TERMSET: dict[str, list[str]] = {
    "pseudo_negations": _HEDGED_NEGATIONS + [
        "no change", "no significant change", "no interval change", "not significantly changed",
        "without change", "without significant change", "no increase", "not only",
        "no substantial change", "not changed", "unchanged",
    ],
    "preceding_negations": [
        "no", "not", "without", "nor", "no evidence of", "no evidence for", "no sign of",
        "no signs of", "negative for", "free of", "absence of", "resolved", "resolution of",
        "clear of", "interval removal of", "removal of", "no longer", "never", "neither",
        "there is no", "there are no", "rather than",
    ],
    "following_negations": [
        "absent", "not seen", "not identified", "not present", "not visualized",
        "not demonstrated", "not appreciated", "has resolved", "have resolved", "resolved",
        "has cleared", "have cleared", "removed", "unlikely", "excluded", "ruled out",
        "no longer seen", "no longer present", "not evident", "not noted",
    ],
    "termination": [
        "but", "however", "although", "though", "which", "aside from", "apart from", "except",
        "other than", "otherwise", ";", "nevertheless", "yet", "still", "whereas",
    ],
}
UNCERTAINTY_TERMSET: dict[str, list[str]] = {
    "pseudo_negations": ["no doubt", "without doubt", "likely unchanged"],
    "preceding_negations": [
        "possible", "possibly", "probable", "probably", "may", "might", "could", "questionable",
        "question of", "suspicious for", "suspected", "suspect", "suspicion of", "concerning for",
        "concern for", "worrisome for", "suggestive of", "suggests", "suggesting", "likely",
        "cannot exclude", "can not exclude", "difficult to exclude", "cannot rule out",
        "rule out", "r/o", "versus", "vs", "vs.", "differential", "borderline", "equivocal",
        "indeterminate", "may represent", "could represent", "presumed", "presumably",
        "atypical", "suggestion of", "perhaps", "uncertain", "cannot be excluded",
        "can not be excluded", "not excluded", "not be excluded", "not entirely excluded",
        "not ruled out", "not be ruled out", "cannot be ruled out",
    ],
    "following_negations": [
        "cannot be excluded", "can not be excluded", "not excluded", "not be excluded",
        "not entirely excluded", "not completely excluded", "cannot be ruled out",
        "can not be ruled out", "not ruled out", "not be ruled out", "is possible",
        "is suspected", "are suspected", "is questioned", "is likely", "versus", "vs",
        "difficult to exclude", "could be", "may be", "is not clearly excluded", "?",
        "is questionable", "are possible", "not clearly excluded", "may represent",
        "could represent", "might represent", "may reflect", "could reflect", "may indicate",
    ],
    "termination": [
        "but", "however", "although", "though", "which", "aside from", "apart from", "except",
        "other than", "otherwise", ";", "nevertheless", "whereas", "no", "without",
    ],
}


@functools.lru_cache(maxsize=1)
def build_pipeline() -> spacy.language.Language:
    """The spaCy pipeline; built once per process (patterns compile in about a second)."""
    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    ruler = nlp.add_pipe("entity_ruler", config={"phrase_matcher_attr": "LOWER"})
    patterns = [
        {"label": label, "id": "mention", "pattern": phrase}
        for label, phrases in MENTIONS.items() for phrase in phrases
    ]
    ruler.add_patterns(patterns + _normal_patterns())
    nlp.add_pipe("negex", name="negation",
                 config={"neg_termset": NEGATION_TERMSET, "extension_name": "negex"})
    nlp.add_pipe("negex", name="uncertainty",
                 config={"neg_termset": UNCERTAINTY_TERMSET, "extension_name": "uncertain"})
    return nlp


# Hedge words that a multi-token mention can contain ("the heart may be mildly enlarged").
_INNER_HEDGES = frozenset({"may", "might", "could", "possibly", "probably", "possible",
                           "borderline", "questionable", "likely"})


def _observations(ent) -> list[str]:
    """The observations a mention or normal statement speaks of."""
    if ent.ent_id_ != "normal":
        return ent.label_.split("|")
    words = {t.lower_ for t in ent}
    out = []
    if words & set(_HEART):
        out.append("Cardiomegaly")
    # "Cardiomediastinal silhouette is normal" speaks of the mediastinum, not of heart size.
    if words & set(_CARDIOMEDIASTINAL + _MEDIASTINUM):
        out.append("Enlarged Cardiomediastinum")
    return out


def _mention_state(ent) -> int:
    if ent.ent_id_ == "normal":
        return L.NEGATIVE
    if ent._.uncertain or any(t.lower_ in _INNER_HEDGES for t in ent):
        return L.UNCERTAIN
    if ent._.negex:
        return L.NEGATIVE
    return L.POSITIVE


# Aggregation order across mentions: positive > uncertain > negative > blank.
_RANK = {L.ABSENT: 0, L.NEGATIVE: 1, L.UNCERTAIN: 2, L.POSITIVE: 3}


def annotate(text: str) -> list[tuple[str, int, str]]:
    """The mentions found in a report: (observation, state, sentence-level span text)."""
    doc = build_pipeline()(text)
    out = []
    for ent in doc.ents:
        if ent.label_ == _IGNORE:
            continue
        for observation in _observations(ent):
            out.append((observation, _mention_state(ent), ent.text))
    return out


def _labels_from_doc(doc) -> np.ndarray:
    vec = np.full((L.NUM_OBSERVATIONS,), L.ABSENT, np.int8)
    for ent in doc.ents:
        if ent.label_ == _IGNORE:
            continue
        state = _mention_state(ent)
        for observation in _observations(ent):
            i = L.INDEX[observation]
            if _RANK[state] > _RANK[int(vec[i])]:
                vec[i] = state
    pathologies = [i for name, i in L.INDEX.items() if name not in ("No Finding", "Support Devices")]
    if not np.isin(vec[pathologies], (L.POSITIVE, L.UNCERTAIN)).any():
        vec[L.INDEX["No Finding"]] = L.POSITIVE
    else:
        vec[L.INDEX["No Finding"]] = L.ABSENT
    return vec


def label_report(text: str) -> np.ndarray:
    """One report -> int8 [14] label vector (1 positive, 0 negative, -1 uncertain, -2 blank)."""
    return _labels_from_doc(build_pipeline()(_clean(text)))


def label_reports(texts: Iterable[str], batch_size: int = 256) -> np.ndarray:
    """Many reports -> int8 [N, 14]."""
    docs = build_pipeline().pipe((_clean(t) for t in texts), batch_size=batch_size)
    rows = [_labels_from_doc(d) for d in docs]
    return np.stack(rows) if rows else np.zeros((0, L.NUM_OBSERVATIONS), np.int8)


def _clean(text: str | None) -> str:
    # Collapse whitespace so that line breaks inside a report do not split patterns.
    return " ".join((text or "").split())


def positive_observations(vec: Sequence[int]) -> list[str]:
    """Names of the observations that are positive in a label vector."""
    return [name for name, v in zip(L.OBSERVATIONS, vec) if int(v) == L.POSITIVE]
