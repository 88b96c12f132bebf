"""Radiology report text: sections, de-identification placeholders, IU X-ray MeSH terms.

Two sources of report text are handled:

- MIMIC-CXR free text (``files/pXX/pID/sID.txt``): sections start with an upper- or lower-case
  header at the start of a line ("FINDINGS:", "IMPRESSION:", "FINDINGS AND IMPRESSION:",
  "CONCLUSION:", ...) and run, across lines, until the next header.
- IU X-ray (Open-i) XML (``ecgen-radiology/<uid>.xml``): ``AbstractText Label="FINDINGS"`` etc.,
  the indexers' MeSH terms (``<MeSH><major>``) and the ``parentImage`` ids of the study's images.

De-identification placeholders ("___" in MIMIC, "XXXX" in IU X-ray) follow one rule for both
datasets, ``deid``:
  "token" (default): each run of placeholders (e.g. "XXXX XXXX XXXX") becomes one ``DEID_TOKEN``
    ("XXXX"), so both datasets speak the same placeholder and a model learns one symbol for it;
  "remove": placeholders are deleted;
  "keep": text unchanged apart from whitespace.
Whitespace is always normalised (runs of spaces and newlines -> one space, no space before
punctuation, stripped ends).

MeSH terms -> CheXpert labels (``labels_from_mesh``) is defined, with its map, in ``mesh``.
"""

from __future__ import annotations

import dataclasses
import re
import xml.etree.ElementTree as ET
from typing import Literal

# labels_from_mesh is re-exported: the IU X-ray builder labels studies through this module.
from mavilt_jax.data.mesh_terms import labels_from_mesh, mesh_problems  # noqa: F401

DeidMode = Literal["token", "remove", "keep"]
Section = Literal["findings", "impression", "both"]

DEID_TOKEN = "XXXX"
DEFAULT_DEID: DeidMode = "token"

# "___" (MIMIC) or "XXXX" (IU X-ray; 4+ capital X, so Roman numerals and "x-ray" are untouched).
# No word boundaries: the source glues placeholders to text ("x-XXXX", "XXXXPM", "___F").
_PLACEHOLDER = r"(?:_{2,}|X{4,})"
# Capital X glued to a run joins it ("X___" is one placeholder), so that the rule is idempotent:
# otherwise "X___" -> "XXXXX", which a second pass would shorten to "XXXX".
_PLACEHOLDER_RUN = re.compile(rf"X*{_PLACEHOLDER}(?:\s*{_PLACEHOLDER})*X*")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.,;:!?)])")
_WHITESPACE = re.compile(r"\s+")

# Section headers: at the start of a line, letters/spaces/&/ followed by a colon.
_HEADER = re.compile(r"^[ \t]*([A-Za-z][A-Za-z &/]{0,40}?)[ \t]*:", re.MULTILINE)
_FINDINGS_HEADERS = frozenset({"findings", "finding", "chest findings", "pa and lateral chest findings"})
_IMPRESSION_HEADERS = frozenset(
    {"impression", "impressions", "conclusion", "conclusions", "summary", "opinion", "interpretation"}
)
# A combined section is reported as findings (``select_text`` falls back to it for impression).
_COMBINED_HEADERS = frozenset(
    {
        "findings and impression",
        "impression and findings",
        "findings/impression",
        "impression/findings",
        "findings & impression",
        "findings and impressions",
    }
)
# Other sections of MIMIC reports; recognised in any case so that they end the one before.
_OTHER_HEADERS = frozenset(
    {
        "indication", "history", "clinical history", "clinical information", "reason for exam",
        "reason for examination", "examination", "exam", "technique", "comparison", "comparisons",
        "notification", "recommendation", "recommendations", "wet read", "addendum", "procedure",
        "type of examination", "study",
    }
)  # fmt: skip
_KNOWN_HEADERS = _FINDINGS_HEADERS | _IMPRESSION_HEADERS | _COMBINED_HEADERS | _OTHER_HEADERS


def normalize_whitespace(text: str) -> str:
    """One space between words, none before punctuation, no leading/trailing space."""
    text = _WHITESPACE.sub(" ", text)
    return _SPACE_BEFORE_PUNCT.sub(r"\1", text).strip()


def apply_deid(text: str, deid: DeidMode = DEFAULT_DEID) -> str:
    """Applies the de-identification rule (see the module docstring) to ``text``."""
    if deid == "keep":
        return text
    if deid == "token":
        return _PLACEHOLDER_RUN.sub(DEID_TOKEN, text)
    if deid == "remove":
        return _PLACEHOLDER_RUN.sub(" ", text)
    raise ValueError(f"deid must be 'token', 'remove' or 'keep', got {deid!r}.")


def clean_text(text: str | None, deid: DeidMode = DEFAULT_DEID) -> str:
    """The de-identification rule, then whitespace normalisation."""
    return normalize_whitespace(apply_deid(text or "", deid))


@dataclasses.dataclass(frozen=True)
class ReportSections:
    """Cleaned report sections; a section the report lacks is the empty string."""

    findings: str = ""
    impression: str = ""
    indication: str = ""
    comparison: str = ""

    @property
    def usable(self) -> bool:
        """Whether the report has text a model can be trained on (findings or impression)."""
        return bool(self.findings or self.impression)


def select_text(findings: str, impression: str, section: Section = "findings", *, fallback: bool = True) -> str:
    """The report text a model is trained and evaluated on; papers differ on which part.

    Args:
      findings, impression: cleaned section texts (empty when absent).
      section: "findings", "impression", or "both" (findings then impression).
      fallback: when the requested section is empty, use the other one (R2Gen-style findings
        with impression as the fallback).
    """
    if section == "both":
        return " ".join(t for t in (findings, impression) if t)
    if section == "findings":
        primary, other = findings, impression
    elif section == "impression":
        primary, other = impression, findings
    else:
        raise ValueError(f"section must be 'findings', 'impression' or 'both', got {section!r}.")
    return primary if primary or not fallback else other


def _header_name(raw: str) -> str:
    return _WHITESPACE.sub(" ", raw).strip().lower()


def _is_header(match: re.Match[str]) -> bool:
    """A line-initial "Name:" is a header when it is all capitals or a known section name, so a
    sentence such as "Note: ..." inside a section does not cut it."""
    raw = match.group(1).strip()
    return raw.isupper() or _header_name(raw) in _KNOWN_HEADERS


def split_mimic_sections(text: str) -> dict[str, str]:
    """Raw MIMIC-CXR report text -> {normalised header: raw body}; text before the first header
    is under "preamble". A header repeated later appends to the earlier body."""
    sections: dict[str, str] = {}
    matches = [m for m in _HEADER.finditer(text) if _is_header(m)]
    starts = [m.start() for m in matches] + [len(text)]
    if not matches or matches[0].start() > 0:
        sections["preamble"] = text[: starts[0]]
    for match, end in zip(matches, starts[1:]):
        name = _header_name(match.group(1))
        body = text[match.end() : end]
        sections[name] = f"{sections[name]}\n{body}" if name in sections else body
    return sections


def parse_mimic_report(text: str, *, deid: DeidMode = DEFAULT_DEID) -> ReportSections:
    """Sections of a MIMIC-CXR free-text report (headers in any case; bodies across lines)."""
    raw = split_mimic_sections(text)
    findings = [body for name, body in raw.items() if name in _FINDINGS_HEADERS | _COMBINED_HEADERS]
    impression = [body for name, body in raw.items() if name in _IMPRESSION_HEADERS]
    return ReportSections(
        findings=clean_text(" ".join(findings), deid),
        impression=clean_text(" ".join(impression), deid),
        indication=clean_text(raw.get("indication", raw.get("history", "")), deid),
        comparison=clean_text(raw.get("comparison", ""), deid),
    )


@dataclasses.dataclass(frozen=True)
class IuXrayReport:
    """One Open-i report XML.

    uid: the collection's report id (``IUXRId``, also the XML file stem), e.g. "1".
    sections: cleaned FINDINGS / IMPRESSION / INDICATION / COMPARISON.
    mesh_major: the indexers' MeSH terms, e.g. ("Cardiomegaly/borderline", "Pulmonary Artery/enlarged").
    mesh_automatic: terms found by the automatic indexer.
    image_ids: ``parentImage`` ids in XML order, e.g. ("CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001").
    """

    uid: str
    sections: ReportSections
    mesh_major: tuple[str, ...]
    mesh_automatic: tuple[str, ...]
    image_ids: tuple[str, ...]

    @property
    def problems(self) -> tuple[str, ...]:
        """The head of each major MeSH term (the "Problems" column of indiana_reports.csv)."""
        return mesh_problems(self.mesh_major)


def parse_iu_xml(xml: str | bytes, *, deid: DeidMode = DEFAULT_DEID) -> IuXrayReport:
    """Parses one Open-i report XML (``ecgen-radiology/<uid>.xml``).

    Raises:
      ValueError: the text is not well-formed XML or has no report id.
    """
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        raise ValueError(f"not a well-formed report XML: {e}") from e
    uid_node = root.find("IUXRId")
    if uid_node is None or not uid_node.get("id"):
        raise ValueError("report XML has no <IUXRId id=...>")
    texts: dict[str, str] = {}
    for node in root.iter("AbstractText"):
        label = (node.get("Label") or "").strip().lower()
        texts[label] = "".join(node.itertext())
    mesh = root.find("MeSH")
    major = tuple(_strip(n.text) for n in mesh.iter("major") if _strip(n.text)) if mesh is not None else ()
    automatic = tuple(_strip(n.text) for n in mesh.iter("automatic") if _strip(n.text)) if mesh is not None else ()
    return IuXrayReport(
        uid=uid_node.get("id"),
        sections=ReportSections(
            findings=clean_text(texts.get("findings"), deid),
            impression=clean_text(texts.get("impression"), deid),
            indication=clean_text(texts.get("indication"), deid),
            comparison=clean_text(texts.get("comparison"), deid),
        ),
        mesh_major=major,
        mesh_automatic=automatic,
        image_ids=tuple(n.get("id") for n in root.iter("parentImage") if n.get("id")),
    )


def _strip(text: str | None) -> str:
    return (text or "").strip()
