"""The CheXpert label space shared by the data generator, the builders and the report labeler.

Each of the 14 observations takes one of four states, encoded as small integers so that a label
vector is a plain ``int8`` array of length 14:

  POSITIVE = 1, NEGATIVE = 0, UNCERTAIN = -1, ABSENT (blank, not mentioned) = -2.

The positive/negative/uncertain values follow CheXpert's CSV convention (1, 0, -1); CheXpert leaves
"not mentioned" empty, which we store as -2 so that arrays stay integer.
"""

from __future__ import annotations

OBSERVATIONS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
NUM_OBSERVATIONS = len(OBSERVATIONS)
INDEX: dict[str, int] = {name: i for i, name in enumerate(OBSERVATIONS)}

POSITIVE = 1
NEGATIVE = 0
UNCERTAIN = -1
ABSENT = -2
STATES: dict[int, str] = {
    POSITIVE: "positive",
    NEGATIVE: "negative",
    UNCERTAIN: "uncertain",
    ABSENT: "absent",
}

# The five observations most papers report clinical F1 on (CheXpert competition tasks).
TOP5: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Pleural Effusion",
)
