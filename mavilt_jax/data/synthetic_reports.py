"""Radiology reports for synthetic studies, written from their structured findings.

A report has a FINDINGS and an IMPRESSION section. Each finding and each normal statement has
several phrasings, the order of the findings varies, and which absent observations are stated
negative is part of the findings record (``Findings.negated``), so the text is not a fixed function
of the labels while the labels stay a fixed function of the text:

- every positive observation is stated positively, in the IMPRESSION and (except the
  pneumonia interpretation, which only the impression gives) in the FINDINGS;
- every uncertain observation is stated with a hedge ("possible", "may represent",
  "cannot be excluded"), never positively;
- every observation in ``Findings.negated`` is stated negatively ("no", "without",
  "negative for", "not enlarged", "normal"), and
- no other observation is mentioned.

A sentence never mixes two of these states, so a rule labeler with NegEx-style scopes (a trigger
governs the rest of its sentence) reads every sentence unambiguously. The vocabulary is the
CheXpert labeler's: cardiomegaly / enlarged heart, pleural effusion, pneumothorax, opacity,
consolidation, nodule / mass, pulmonary edema, atelectasis, pneumonia, fracture, endotracheal
tube / central venous catheter / nasogastric tube / pacemaker.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from mavilt_jax.data.findings import Findings


@dataclasses.dataclass(frozen=True)
class Report:
    findings: str
    impression: str

    @property
    def text(self) -> str:
        return f"FINDINGS: {self.findings}\nIMPRESSION: {self.impression}"


# Normal statements, keyed by the set of observations they negate. One statement may cover
# several observations ("No pleural effusion or pneumothorax.").
NEGATIVE_PHRASES: dict[tuple[str, ...], tuple[str, ...]] = {
    ("Pleural Effusion", "Pneumothorax"): (
        "No pleural effusion or pneumothorax.",
        "There is no pleural effusion or pneumothorax.",
        "No pneumothorax or pleural effusion is seen.",
        "Negative for pleural effusion or pneumothorax.",
    ),
    ("Cardiomegaly", "Enlarged Cardiomediastinum"): (
        "The heart size and mediastinal contours are normal.",
        "Normal heart size and mediastinal contours.",
        "Heart size and cardiomediastinal silhouette are within normal limits.",
    ),
    ("Consolidation", "Pneumonia"): (
        "No focal consolidation or pneumonia.",
        "There is no consolidation or pneumonia.",
    ),
    ("Pleural Effusion",): ("No pleural effusion.", "There is no pleural effusion.", "No pleural effusions are seen."),
    ("Pneumothorax",): ("No pneumothorax.", "There is no pneumothorax.", "No pneumothorax is identified."),
    ("Cardiomegaly",): ("Heart size is normal.", "The heart is not enlarged.", "No cardiomegaly.", "Normal heart size."),
    ("Enlarged Cardiomediastinum",): (
        "The mediastinal contours are normal.",
        "Normal cardiomediastinal silhouette.",
        "The cardiomediastinal silhouette is within normal limits.",
    ),
    ("Consolidation",): ("No focal consolidation.", "There is no focal consolidation.", "The lungs are clear without focal consolidation."),
    ("Lung Opacity",): ("No focal opacity.", "There is no focal lung opacity.", "No focal airspace opacity is seen."),
    ("Edema",): ("No pulmonary edema.", "There is no pulmonary edema.", "No evidence of pulmonary edema."),
    ("Lung Lesion",): ("No pulmonary nodules or masses.", "No focal nodule or mass is identified.", "There is no pulmonary nodule."),
    ("Pneumonia",): ("No evidence of pneumonia.", "Negative for pneumonia."),
    ("Fracture",): ("No acute fracture.", "No displaced rib fracture is seen.", "The osseous structures are intact without fracture."),
}

NORMAL_IMPRESSIONS: tuple[str, ...] = (
    "No acute cardiopulmonary abnormality.",
    "No acute cardiopulmonary process.",
    "No acute cardiopulmonary disease.",
    "Normal chest radiograph.",
)

_SIZE_ADJ = {"small": ("small",), "moderate": ("moderate", "moderate-sized"), "large": ("large",)}
_ZONE = {"upper": "upper", "middle": "mid", "lower": "lower"}


def _lobe(side: str, zone: str) -> str:
    if zone == "middle":
        return "right middle lobe" if side == "right" else "lingula"
    return f"{side} {zone} lobe"


def _location(rng: np.random.Generator, side: str, zone: str) -> str:
    if side == "bilateral":
        return str(rng.choice(["both lung bases", "the bilateral lower lungs"]))
    options = [f"the {side} {_ZONE[zone]} lung zone", f"the {_lobe(side, zone)}"]
    if zone == "lower":
        options.append(f"the {side} lung base")
    return str(rng.choice(options))


def _sentences(f: Findings, rng: np.random.Generator) -> list[tuple[str, str, str]]:
    """(group, findings sentence, impression sentence) for every finding present."""
    out = []
    pick = lambda options: str(rng.choice(options))  # noqa: E731

    if f.devices:
        device_text = {
            "endotracheal tube": ("Endotracheal tube terminates {n} cm above the carina.", "Endotracheal tube in standard position."),
            "central venous catheter": ("Right internal jugular central venous catheter with tip in the SVC.",
                                        "Right central venous catheter in place."),
            "nasogastric tube": ("Nasogastric tube courses below the diaphragm into the stomach.", "Nasogastric tube in the stomach."),
            "pacemaker": ("Left chest wall pacemaker with lead in the right ventricle.", "Pacemaker in place."),
        }
        for d in f.devices:
            fs, im = device_text[d]
            out.append(("devices", fs.format(n=int(rng.integers(3, 6))), im))
    if f.cardiomegaly:
        sev = f.cardiomegaly.severity
        if f.cardiomegaly.hedged:
            s = pick(["Possible mild cardiomegaly.", "The heart may be mildly enlarged.", "Borderline cardiomegaly cannot be excluded."])
            out.append(("heart", s, pick(["Possible mild cardiomegaly.", "The heart may be mildly enlarged."])))
        else:
            adv = {"mild": "mildly", "moderate": "moderately", "severe": "markedly"}[sev]
            s = pick([f"The heart is {adv} enlarged.", f"{sev.capitalize()} cardiomegaly.", f"There is {sev} cardiomegaly.",
                      f"The cardiac silhouette is {adv} enlarged."])
            out.append(("heart", s, pick([f"{sev.capitalize()} cardiomegaly.", f"{adv.capitalize()} enlarged heart."])))
    if f.effusion:
        e = f.effusion
        size = pick(_SIZE_ADJ[e.size])
        both = e.side == "bilateral"
        core = f"{size} bilateral pleural effusions" if both else f"{size} {e.side} pleural effusion"
        article = "" if both else "a "
        angle = "both costophrenic angles" if both else f"the {e.side} costophrenic angle"
        if e.hedged:
            s = pick([f"Possible {core}.", f"Blunting of {angle} may represent {article}{core}.",
                      f"{(article + core).capitalize()} cannot be excluded."])
            out.append(("pleura", s, f"Possible {core}."))
        else:
            s = pick([f"There {'are' if both else 'is'} {article}{core}.", f"{core.capitalize()}.",
                      f"{core.capitalize()} with blunting of {angle}."])
            out.append(("pleura", s, f"{core.capitalize()}."))
    if f.pneumothorax:
        p = f.pneumothorax
        core = f"{p.size} {p.side} {'apical ' if p.size == 'small' else ''}pneumothorax"
        if p.hedged:
            s = pick([f"Possible {core}.", f"A {core} cannot be excluded.", f"Questionable {core}."])
            out.append(("pleura", s, f"Possible {core}."))
        else:
            s = pick([f"There is a {core}.", f"{core.capitalize()}.", f"A {core} is present."])
            out.append(("pleura", s, f"{core.capitalize()}."))
    if f.opacity:
        o = f.opacity
        loc = _location(rng, o.side, o.zone)
        if o.kind == "opacity":
            adj = pick(["patchy", "hazy", "ill-defined"])
            noun = "opacities" if o.side == "bilateral" else "opacity"
        else:
            adj = pick(["focal", "dense", ""])
            noun = "consolidation"
        core = f"{adj} {noun}".strip()
        if o.hedged:
            s = pick([f"Possible {core} in {loc}.", f"Subtle {noun} in {loc} cannot be excluded."])
            im = f"Possible {noun} in {loc}."
        else:
            verb = "are" if noun == "opacities" else "is"
            s = pick([f"There {verb} {core} in {loc}.", f"{core[0].upper() + core[1:]} in {loc}."])
            im = f"{noun.capitalize()} in {loc}."
        out.append(("lungs", s, im))
        if o.pneumonia == "uncertain":
            out.append(("lungs", "", pick(["This may represent pneumonia.", "Possible pneumonia.", "Pneumonia cannot be excluded."])))
        elif o.pneumonia == "positive":
            out.append(("lungs", "", pick(["Findings are consistent with pneumonia.", "Compatible with pneumonia."])))
    if f.nodule:
        n = f.nodule
        size = f"{n.size_mm} mm" if n.kind == "nodule" else f"{n.size_mm / 10:.1f} cm"
        loc = _location(rng, n.side, n.zone)
        if n.hedged:
            s = pick([f"Possible {size} nodule in {loc}.", f"A {size} nodular density in {loc} may represent a nodule."])
            out.append(("lungs", s, f"Possible pulmonary nodule in {loc}."))
        else:
            s = pick([f"There is a {size} {n.kind} in {loc}.", f"A {size} {n.kind} is seen in {loc}.", f"{size} {n.kind} in {loc}."])
            out.append(("lungs", s, f"{n.kind.capitalize()} in {loc}."))
    if f.edema:
        sev = f.edema.severity
        if f.edema.hedged:
            s = pick(["Possible mild pulmonary edema.", "Mild interstitial edema cannot be excluded."])
            out.append(("lungs", s, "Possible mild pulmonary edema."))
        else:
            s = pick([f"There is {sev} pulmonary edema.", f"{sev.capitalize()} interstitial pulmonary edema.",
                      f"Findings consistent with {sev} pulmonary edema."])
            out.append(("lungs", s, f"{sev.capitalize()} pulmonary edema."))
    if f.atelectasis:
        a = f.atelectasis
        where = "bibasilar" if a.side == "bilateral" else f"{a.side} basilar"
        if a.hedged:
            # "density", not "opacity": the latter would mention Lung Opacity.
            bases = "lung bases" if a.side == "bilateral" else a.side + " base"
            s = pick([f"Possible {where} atelectasis.", f"Linear density at the {bases} may represent atelectasis."])
            out.append(("lungs", s, f"Possible {where} atelectasis."))
        else:
            bases = "lung bases" if a.side == "bilateral" else a.side + " base"
            s = pick([f"{where.capitalize()} atelectasis.", f"There is {where} plate-like atelectasis.",
                      f"Subsegmental atelectasis at the {bases}."])
            out.append(("lungs", s, f"{where.capitalize()} atelectasis."))
    if f.widened_mediastinum:
        if f.widened_mediastinum.hedged:
            s = pick(["Possible mediastinal widening.", "The mediastinum may be widened."])
            out.append(("heart", s, "Possible mediastinal widening."))
        else:
            s = pick(["The mediastinum is widened.", "Widened mediastinum.", "There is mediastinal widening."])
            out.append(("heart", s, pick(["Widened mediastinum.", "Mediastinal widening."])))
    if f.fracture:
        fr = f.fracture
        rib = f"{fr.side} {_ORDINALS[fr.rib]} rib"
        if fr.hedged:
            s = pick([f"Possible nondisplaced fracture of the lateral {rib}.", f"A subtle {rib} fracture cannot be excluded."])
            out.append(("bones", s, f"Possible {rib} fracture."))
        elif fr.healed:
            s = pick([f"Healed fracture of the lateral {rib}.", f"Old healed {rib} fracture."])
            out.append(("bones", s, f"Healed {rib} fracture."))
        else:
            s = pick([f"Acute displaced fracture of the lateral {rib}.", f"There is a displaced {rib} fracture."])
            out.append(("bones", s, f"Acute {rib} fracture."))
    return out


_ORDINALS = {4: "fourth", 5: "fifth", 6: "sixth", 7: "seventh", 8: "eighth", 9: "ninth"}


def _negatives(negated: Sequence[str], rng: np.random.Generator) -> list[tuple[str, str]]:
    """(group, sentence) covering exactly the observations in ``negated``, grouping some."""
    todo = set(negated)
    out = []
    groups = {"Pleural Effusion": "pleura", "Pneumothorax": "pleura", "Cardiomegaly": "heart",
              "Enlarged Cardiomediastinum": "heart", "Fracture": "bones"}
    for key, options in NEGATIVE_PHRASES.items():
        if set(key) <= todo and (len(key) == 1 or rng.random() < 0.7):
            out.append((groups.get(key[0], "lungs"), str(rng.choice(options))))
            todo -= set(key)
    return out


def compose_report(findings: Findings, rng: np.random.Generator) -> Report:
    """A FINDINGS + IMPRESSION report that states ``findings`` (see the module docstring)."""
    positives = _sentences(findings, rng)
    negatives = _negatives(findings.negated, rng)
    order = ["devices", "heart", "lungs", "pleura", "bones"]
    if rng.random() < 0.5:  # lungs first is as common as heart first
        order = ["devices", "lungs", "pleura", "heart", "bones"]
    body = []
    for group in order:
        items = [s for g, s, _ in positives if g == group and s] + [s for g, s in negatives if g == group]
        if group == "lungs" and len(items) > 1:
            items = [items[i] for i in rng.permutation(len(items))]
        body.extend(items)
    if not body or rng.random() < 0.25:  # a technique line, as many reports open with
        portable = "Portable AP" if findings.view == "AP" else "PA"
        body.insert(0, str(rng.choice([f"{portable} view of the chest.", f"Single {findings.view} radiograph of the chest."])))
    # Pathology first, devices last in the impression.
    impression = [im for (g, _, im) in positives if g != "devices"] + [im for (g, _, im) in positives if g == "devices"]
    if findings.is_normal:
        impression.append(str(rng.choice(NORMAL_IMPRESSIONS)))
    return Report(findings=" ".join(body), impression=" ".join(impression))
