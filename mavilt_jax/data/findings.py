"""The findings record of a synthetic study: what it shows and what its report states.

A leaf module (only `labels` below it): the sampler (`phantoms`), the renderer
(`phantom_render`), the report writer (`synthetic_reports`) and the VQA generator (`vqa`) all
read this record and none of them import each other for it.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from mavilt_jax.data import labels as labels_lib


@dataclasses.dataclass(frozen=True)
class Cardiomegaly:
    severity: str  # mild | moderate | severe
    hedged: bool = False


@dataclasses.dataclass(frozen=True)
class Effusion:
    side: str  # right | left | bilateral
    size: str  # small | moderate | large
    hedged: bool = False


@dataclasses.dataclass(frozen=True)
class Pneumothorax:
    side: str  # right | left
    size: str  # small | moderate | large
    hedged: bool = False


@dataclasses.dataclass(frozen=True)
class Opacity:
    kind: str  # opacity | consolidation
    side: str  # right | left | bilateral
    zone: str  # upper | middle | lower
    hedged: bool = False
    pneumonia: str = "none"  # none | uncertain | positive (the report's interpretation)


@dataclasses.dataclass(frozen=True)
class Nodule:
    kind: str  # nodule (< 30 mm) | mass
    size_mm: int
    side: str  # right | left
    zone: str  # upper | middle | lower
    hedged: bool = False


@dataclasses.dataclass(frozen=True)
class Edema:
    severity: str  # mild | moderate
    hedged: bool = False


@dataclasses.dataclass(frozen=True)
class Atelectasis:
    side: str  # right | left | bilateral
    hedged: bool = False


@dataclasses.dataclass(frozen=True)
class WidenedMediastinum:
    half_width: float  # of the superior mediastinum, patient units (normal: 0.10)
    hedged: bool = False


@dataclasses.dataclass(frozen=True)
class Fracture:
    side: str  # right | left
    rib: int  # posterior rib number, 4..9
    healed: bool = False  # healed: callus; acute: a gap and a displaced fragment
    hedged: bool = False


DEVICES = ("endotracheal tube", "central venous catheter", "nasogastric tube", "pacemaker")


@dataclasses.dataclass(frozen=True)
class Findings:
    """Everything a synthetic study shows and states.

    ``ctr`` is the cardiothoracic ratio the heart is rendered with (widest heart / widest inner
    thorax). ``negated`` lists the CheXpert observations the report explicitly states as absent;
    every other observation without a finding is not mentioned (label ABSENT).
    """

    view: str = "PA"
    ctr: float = 0.45
    cardiomegaly: Cardiomegaly | None = None
    effusion: Effusion | None = None
    pneumothorax: Pneumothorax | None = None
    opacity: Opacity | None = None
    nodule: Nodule | None = None
    edema: Edema | None = None
    atelectasis: Atelectasis | None = None
    widened_mediastinum: WidenedMediastinum | None = None
    fracture: Fracture | None = None
    devices: tuple[str, ...] = ()
    negated: tuple[str, ...] = ()

    PATHOLOGIES = ("cardiomegaly", "effusion", "pneumothorax", "opacity", "nodule", "edema",
                   "atelectasis", "widened_mediastinum", "fracture")

    @property
    def is_normal(self) -> bool:
        """No pathology present (support devices alone leave a study normal, as in CheXpert)."""
        return all(getattr(self, name) is None for name in self.PATHOLOGIES)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


def finding_states(f: Findings) -> dict[str, int]:
    """Observation -> POSITIVE/UNCERTAIN for every observation the findings make present."""
    pos, unc = labels_lib.POSITIVE, labels_lib.UNCERTAIN
    state: dict[str, int] = {}

    def put(name: str, hedged: bool) -> None:
        state[name] = unc if hedged else pos

    if f.cardiomegaly:
        put("Cardiomegaly", f.cardiomegaly.hedged)
    if f.effusion:
        put("Pleural Effusion", f.effusion.hedged)
    if f.pneumothorax:
        put("Pneumothorax", f.pneumothorax.hedged)
    if f.opacity:
        put("Lung Opacity" if f.opacity.kind == "opacity" else "Consolidation", f.opacity.hedged)
        if f.opacity.pneumonia != "none":
            put("Pneumonia", f.opacity.pneumonia == "uncertain")
    if f.nodule:
        put("Lung Lesion", f.nodule.hedged)
    if f.edema:
        put("Edema", f.edema.hedged)
    if f.atelectasis:
        put("Atelectasis", f.atelectasis.hedged)
    if f.widened_mediastinum:
        put("Enlarged Cardiomediastinum", f.widened_mediastinum.hedged)
    if f.fracture:
        put("Fracture", f.fracture.hedged)
    if f.devices:
        put("Support Devices", False)
    return state


def findings_to_labels(f: Findings) -> np.ndarray:
    """int8 [14] CheXpert labels: present findings, stated negatives, and No Finding.

    No Finding is positive when no pathology is positive or uncertain (support devices do not
    count), as the CheXpert labeler defines it; the report then states a normal impression.
    """
    out = np.full((labels_lib.NUM_OBSERVATIONS,), labels_lib.ABSENT, np.int8)
    for name in f.negated:
        out[labels_lib.INDEX[name]] = labels_lib.NEGATIVE
    for name, value in finding_states(f).items():
        out[labels_lib.INDEX[name]] = value
    pathology = [i for i, n in enumerate(labels_lib.OBSERVATIONS) if n not in ("No Finding", "Support Devices")]
    if not np.isin(out[pathology], (labels_lib.POSITIVE, labels_lib.UNCERTAIN)).any():
        out[labels_lib.INDEX["No Finding"]] = labels_lib.POSITIVE
    return out


def findings_from_json(text: str) -> Findings:
    """Inverse of ``Findings.to_json``."""
    d = json.loads(text)
    kinds = {"cardiomegaly": Cardiomegaly, "effusion": Effusion, "pneumothorax": Pneumothorax,
             "opacity": Opacity, "nodule": Nodule, "edema": Edema, "atelectasis": Atelectasis,
             "widened_mediastinum": WidenedMediastinum, "fracture": Fracture}
    for name, cls in kinds.items():
        if d.get(name) is not None:
            d[name] = cls(**d[name])
    d["devices"] = tuple(d.get("devices", ()))
    d["negated"] = tuple(d.get("negated", ()))
    return Findings(**d)
