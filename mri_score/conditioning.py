"""Label conditions for conditional priors and classifiers: vocabularies, ``--condition`` parsing, fastMRI mapping.

A *condition* names a label per field (``contrast``, ``anatomy``; a field left out is
unknown, the network's null label).  Vocabularies come from a checkpoint's ``labels``
metadata (``{"contrast": [...], "anatomy": [...]}``, in index order), so a network
always reads its own.  The text syntax (``--condition``):

* ``none``: no condition (the unconditional prior);
* ``auto``: from the fastMRI file's ``acquisition`` attribute (:data:`FASTMRI_ACQUISITIONS`),
  none when the attribute is missing or unknown;
* ``t2`` or ``knee``: a bare label, looked up in every field (it must name exactly one);
* ``contrast=t2,anatomy=brain``: fields given explicitly, comma separated.

Anatomy aliases (:data:`ANATOMY_ALIASES`, e.g. ``knee`` → ``limb``, ``head`` → ``brain``)
map body parts onto the corpus's anatomy classes.  Unknown labels raise an
:class:`~mri_score.errors.InputError` that lists the accepted ones.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from mri_score.errors import InputError

#: fastMRI ``acquisition`` attribute → ``{field: label}`` (brain and knee datasets).
FASTMRI_ACQUISITIONS: dict[str, dict[str, str]] = {
    "AXT1": {"contrast": "t1", "anatomy": "brain"},
    "AXT1PRE": {"contrast": "t1", "anatomy": "brain"},
    "AXT1POST": {"contrast": "t1", "anatomy": "brain"},
    "AXT2": {"contrast": "t2", "anatomy": "brain"},
    "AXFLAIR": {"contrast": "flair", "anatomy": "brain"},
    "CORPD_FBK": {"contrast": "pd", "anatomy": "limb"},
    "CORPDFS_FBK": {"contrast": "fatsat", "anatomy": "limb"},
}

#: Order of the label fields in the networks' label tensors (``MixedCorpus.labels``: contrast, anatomy);
#: checkpoint metadata is stored with sorted keys, so the order is restored from here.
FIELD_ORDER = ("contrast", "anatomy")

#: Body parts accepted as anatomy labels, and the corpus class they belong to.
ANATOMY_ALIASES: dict[str, str] = {
    "head": "brain", "knee": "limb", "ankle": "limb", "hip": "limb", "shoulder": "limb", "elbow": "limb",
    "wrist": "limb", "leg": "limb", "arm": "limb", "abdomen": "body", "pelvis": "body", "prostate": "body",
    "liver": "body", "chest": "body", "torso": "body",
}


@dataclass(frozen=True)
class Vocabulary:
    """The label fields of a network and each field's classes, in index order (null index = len(classes))."""

    fields: tuple[str, ...]
    classes: tuple[tuple[str, ...], ...]

    @classmethod
    def from_meta(cls, meta: Mapping[str, object], what: str = "checkpoint") -> Vocabulary | None:
        """From checkpoint metadata's ``labels`` (None when the network is unconditional)."""
        labels = meta.get("labels")
        if not labels:
            return None
        if not isinstance(labels, Mapping) or not all(
                isinstance(v, Sequence) and not isinstance(v, str) and v for v in labels.values()):
            raise InputError(f"{what}: metadata 'labels' must map each field to its list of classes")
        fields = sorted((str(k) for k in labels), key=lambda f: (FIELD_ORDER.index(f) if f in FIELD_ORDER
                                                                 else len(FIELD_ORDER), f))
        return cls(tuple(fields), tuple(tuple(str(c) for c in labels[f]) for f in fields))

    def check(self, classes: Sequence[int], what: str) -> None:
        """Refuse when the vocabulary does not fit a network's ``label_classes``."""
        if tuple(len(c) for c in self.classes) != tuple(int(n) for n in classes):
            raise InputError(f"{what}: metadata labels ({self.describe()}) do not fit the network's label classes "
                             f"{list(classes)}")

    def describe(self) -> str:
        """``contrast: t1, t2, …; anatomy: brain, …`` (for error messages)."""
        return "; ".join(f"{f}: {', '.join(c)}" for f, c in zip(self.fields, self.classes))

    def indices(self, condition: Mapping[str, str]) -> tuple[int, ...]:
        """Class index per field (the null index for a field not in ``condition``)."""
        out = []
        for f, classes in zip(self.fields, self.classes):
            label = condition.get(f)
            out.append(len(classes) if label is None else classes.index(label))
        return tuple(out)

    def labels(self, condition: Mapping[str, str], batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """The condition as the networks' label tensor: long ``(batch, F)``."""
        return torch.tensor([self.indices(condition)] * batch, dtype=torch.long, device=device)


def _canonical(vocab: Vocabulary, field: str, label: str) -> str | None:
    classes = vocab.classes[vocab.fields.index(field)]
    if label in classes:
        return label
    if field == "anatomy" and ANATOMY_ALIASES.get(label) in classes:
        return ANATOMY_ALIASES[label]
    return None


def parse_condition(text: str, vocab: Vocabulary | None) -> dict[str, str] | str:
    """Parse a ``--condition`` value: ``"auto"``, or a ``{field: label}`` dict (empty for ``none``).

    Parameters
    ----------
    text : str
        ``none``, ``auto``, a bare label (``t2``, ``knee``) or ``field=label[,field=label]``.
    vocab : Vocabulary or None
        The labels to accept (None: the network has none, so only ``none`` and ``auto`` pass).

    Raises
    ------
    InputError
        One line naming the bad label and listing the accepted ones.
    """
    text = text.strip().lower()
    if text in ("", "none"):
        return {}
    if text == "auto":
        return "auto"
    if vocab is None:
        raise InputError(f"condition {text!r} needs a conditional prior or a classifier; there are no labels "
                         "(accepted: none, auto)")
    accepted = f"accepted: none, auto, or {vocab.describe()} (as field=label or a bare label)"
    out: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",")):
        field, sep, label = (s.strip() for s in part.partition("="))
        if not sep:
            label = field
            hits = [f for f in vocab.fields if _canonical(vocab, f, label) is not None]
            if len(hits) != 1:
                why = "is not a label" if not hits else f"is ambiguous (a label of {', '.join(hits)})"
                raise InputError(f"condition {label!r} {why}; {accepted}")
            field = hits[0]
        if field not in vocab.fields:
            raise InputError(f"condition field {field!r} unknown; {accepted}")
        canon = _canonical(vocab, field, label)
        if canon is None:
            raise InputError(f"condition {field}={label!r} is not a label; {accepted}")
        if field in out:
            raise InputError(f"condition gives {field} twice")
        out[field] = canon
    return out


def acquisition_condition(acquisition: str | None, vocab: Vocabulary | None) -> dict[str, str]:
    """The condition of a fastMRI ``acquisition`` attribute (empty when unknown or not in ``vocab``)."""
    mapped = FASTMRI_ACQUISITIONS.get(str(acquisition or "").strip().upper(), {})
    if vocab is None:
        return {}
    return {f: lab for f, lab in mapped.items() if f in vocab.fields and _canonical(vocab, f, lab) is not None}


def read_acquisition(path: str | os.PathLike[str]) -> str | None:
    """The ``acquisition`` attribute of a fastMRI file (read-only), or None when absent or unusable.

    An unusable file or attribute is reported by :func:`mri_score.fastmri_io.read_fastmri` when the
    file itself is read.
    """
    from mri_score.fastmri_io import open_input, read_attrs

    try:
        with open_input(path) as hf:
            return read_attrs(hf, Path(path)).get("acquisition")
    except InputError:
        return None


def format_condition(condition: Mapping[str, str]) -> str:
    """``contrast=t2,anatomy=brain`` (``none`` when empty): the inverse of :func:`parse_condition`."""
    return ",".join(f"{k}={v}" for k, v in condition.items()) or "none"
