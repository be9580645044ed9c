"""The results blocks of README.md and docs/results.md, rendered from the protocol CSVs (library of ``make_tables``).

Each block sits between two HTML-comment markers and is replaced whole; the rest of both files is kept byte for
byte.  README's summary (``<!-- results-summary:begin -->`` … ``end``, :func:`benchmarks.tables.render_summary`):
every test set of the registered final run and the real development set, or the development run alone before the
final test.  ``docs/results.md``: the development report (``<!-- results:begin -->``), the final test's report
(``<!-- results-final:begin -->``), the prior ablation (``<!-- prior-ablation:begin -->``) and the development
ablation (``<!-- dev-ablation:begin -->``, :func:`benchmarks.tables.render_variants`).  :func:`check_documents`
refuses documents without the blocks a rewrite needs, before any work; :func:`regenerate` rewrites them.
"""

from __future__ import annotations

import csv
import functools
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmarks.protocol import read_csv
from benchmarks.tables import FINAL_CSV, render, render_prior_ablation, render_summary, render_variants
from mri_score.atomic import atomic_output
from mri_score.config import read_text_file
from mri_score.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
ABL_BEGIN, ABL_END = "<!-- prior-ablation:begin -->", "<!-- prior-ablation:end -->"
SUM_BEGIN, SUM_END = "<!-- results-summary:begin -->", "<!-- results-summary:end -->"
DEV_BEGIN, DEV_END = "<!-- dev-ablation:begin -->", "<!-- dev-ablation:end -->"
FINAL_BEGIN, FINAL_END = "<!-- results-final:begin -->", "<!-- results-final:end -->"
#: The development ablations (DDS variants of configs/ablation_prior_dev.yaml, the blended-corpus prior of
#: configs/ablation_blend_dev.yaml, the grown network of configs/ablation_capacity_dev.yaml, the longer training of
#: configs/ablation_long_dev.yaml and its continuation to 20000 steps, configs/ablation_long20k_dev.yaml, the
#: high-SNR levers of configs/ablation_highsnr_dev.yaml, the sharp-per-pixel fine-tune of
#: configs/ablation_sharp_dev.yaml, DDS's re-noise η of configs/ablation_eta_dev.yaml and DDS's final denoising step of
#: configs/ablation_final_denoise_dev.yaml, the coil maps' phase reference of configs/ablation_maps_phase_dev.yaml and
#: ESPIRiT's threshold of configs/ablation_maps_threshold_dev.yaml, its noise edge of
#: configs/ablation_maps_noise_edge_dev.yaml and 30 NFE of configs/ablation_nfe30_dev.yaml),
#: under benchmarks/results:
#: one table each, in this order.
DEV_ABLATIONS = ("ablation_prior_dev.csv", "ablation_blend_dev.csv", "ablation_capacity_dev.csv", "ablation_long_dev.csv",
                 "ablation_long20k_dev.csv", "ablation_highsnr_dev.csv", "ablation_sharp_dev.csv",
                 "ablation_eta_dev.csv", "ablation_final_denoise_dev.csv", "ablation_maps_phase_dev.csv",
                 "ablation_maps_threshold_dev.csv", "ablation_maps_noise_edge_dev.csv",
                 "ablation_nfe30_dev.csv", "ablation_coarse_dev.csv", "ablation_wise_dev.csv",
                 "ablation_native_blend_dev.csv")
#: Per development ablation, its ``(variant, control)`` pairs (:func:`benchmarks.tables.render_variants`): the grown
#: network against the same training steps on the default's architecture; 12000 steps against the first 4000.
DEV_CONTROLS = {"ablation_capacity_dev.csv": (("dds:deep", "dds:continue"),),
                "ablation_long_dev.csv": (("dds:long", "dds:continue"),)}
#: The prior ablation's runs (name, CSV under benchmarks/results): the same protocol with each prior.
ABLATION = (("brain_synth", "bench_protocol.csv"), ("mixed_cond", "bench_protocol_mixed.csv"))
#: Where the full report goes (the README carries the summary and links here).
RESULTS_DOC = ROOT / "docs" / "results.md"
README = ROOT / "README.md"
RESULTS = ROOT / "benchmarks" / "results"


def _rows(csv_path: Path) -> list[dict]:
    if not csv_path.is_file():
        raise InputError(f"{csv_path}: no such results CSV")
    try:
        return read_csv(csv_path)
    except (csv.Error, UnicodeDecodeError) as err:
        raise InputError(f"{csv_path}: not a protocol results CSV ({type(err).__name__}: {err})") from None


def _table(csv_path: Path, render_rows: Callable[[list[dict]], str], rows: list[dict] | None = None) -> str:
    """``render_rows`` of the CSV's rows (or ``rows``); :class:`InputError` naming ``csv_path`` if they do not fit."""
    try:
        return render_rows(_rows(csv_path) if rows is None else rows)
    except (KeyError, ValueError, TypeError, IndexError, ZeroDivisionError) as err:
        raise InputError(f"{csv_path}: not a protocol results CSV ({type(err).__name__}: {err})") from None


def _block(csv_path: Path, render_rows: Callable[[list[dict]], str], begin: str, end: str,
           rows: list[dict] | None = None, source: str | None = None) -> str:
    table = _table(csv_path, render_rows, rows)
    return (f"{begin}\n<!-- generated by benchmarks/make_tables.py from {source or csv_path.name}; do not edit -->\n\n"
            f"{table}\n{end}")


def results_block(csv_path: Path) -> str:
    """The full report block (markers included) for ``csv_path`` (``docs/results.md``)."""
    return _block(csv_path, render, BEGIN, END)


def final_block(csv_path: Path) -> str:
    """The final test's full report block (markers included) for ``csv_path`` (``docs/results.md``)."""
    return _block(csv_path, render, FINAL_BEGIN, FINAL_END)


def summary_block(csv_path: Path, final_path: Path | None = None) -> str:
    """The README's summary block (markers included): DDS against the strongest baseline of each test set.

    With a final test (``final_path``): every test set of the final run, then the real development set of the
    development run ``csv_path`` (the synthetic test sets of both runs are the same data), and a line naming the
    prior of each run (:func:`run_prior`; left out when either report is missing); without one, every test set of
    ``csv_path``.
    """
    if final_path is None:
        return _block(csv_path, render_summary, SUM_BEGIN, SUM_END)
    rows = _rows(final_path) + [r for r in _rows(csv_path) if r.get("group", "").startswith("real")]
    block = _block(final_path, render_summary, SUM_BEGIN, SUM_END, rows=rows,
                   source=f"{final_path.name} and the real development rows of {csv_path.name}")
    priors = [(what, run_prior(path)) for what, path in (("the real development rows", csv_path),
                                                         ("the other rows (the final run)", final_path))]
    if all(p for _, p in priors):
        note = "Priors: " + "; ".join(f"{what} `{p}`" for what, p in priors) + "."
        block = block.replace(f"\n{SUM_END}", f"\n{note}\n{SUM_END}")
    return block


def run_prior(csv_path: Path) -> str | None:
    """The prior a protocol run used, as its report beside ``csv_path`` (``.md``) names it: ``file (sha256 …)``; None
    when the report or its ``- prior:`` line is missing."""
    report = csv_path.with_suffix(".md")
    if not report.is_file():
        return None
    for line in read_text_file(report, report.name, 16 * 1024**2).splitlines():
        if line.startswith("- prior: "):
            return line.removeprefix("- prior: ").split(";")[0].strip()
    return None


def ablation_block(results: Path) -> str:
    """The prior-ablation block (markers included) from the :data:`ABLATION` CSVs in ``results``."""
    runs = []
    for name, file in ABLATION:
        if not (results / file).is_file():
            raise InputError(f"{results / file}: no such results CSV")
        runs.append((name, read_csv(results / file)))
    files = ", ".join(f for _, f in ABLATION)
    return f"{ABL_BEGIN}\n<!-- generated by benchmarks/make_tables.py from {files}; do not edit -->\n\n" \
           f"{render_prior_ablation(runs)}{ABL_END}"


def dev_ablation_block(csv_paths: Sequence[Path]) -> str:
    """The development-ablation block (markers included): for each CSV, in order, a table of its DDS variants
    against its default ``dds`` and L1-wavelet, headed by the CSV's name."""
    tables = [f"From `{path.name}`:\n\n"
              f"{_table(path, functools.partial(render_variants, controls=DEV_CONTROLS.get(path.name, ())))}"
              for path in csv_paths]
    names = ", ".join(p.name for p in csv_paths)
    return f"{DEV_BEGIN}\n<!-- generated by benchmarks/make_tables.py from {names}; do not edit -->\n\n" \
           + "\n".join(tables) + f"\n{DEV_END}"


def dev_ablation_csvs(named: Sequence[str | Path] | None = None) -> list[Path]:
    """The development ablations' CSVs: ``named`` (each must exist), else those of :data:`DEV_ABLATIONS` that do."""
    if named:
        return [Path(p) for p in named]
    return [RESULTS / f for f in DEV_ABLATIONS if (RESULTS / f).is_file()]


def replace_block(text: str, block: str, where: str, begin: str = BEGIN, end: str = END) -> str:
    """``text`` with its one marked block replaced by ``block``; :class:`InputError` naming ``where`` without one."""
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise InputError(f"{where}: needs exactly one {begin} … {end} block")
    head, rest = text.split(begin)
    return head + block + rest.split(end, 1)[1]


def check_documents(readme: Path = README, results_doc: Path = RESULTS_DOC, final: bool = False) -> None:
    """Refuse (:class:`InputError`, one line) documents without the blocks a rewrite needs: run before a long benchmark."""
    needs = [(readme, SUM_BEGIN, SUM_END), (results_doc, BEGIN, END)]
    if final:
        needs.append((results_doc, FINAL_BEGIN, FINAL_END))
    for path, begin, end in needs:
        text = read_text_file(path, path.name, 16 * 1024**2)
        replace_block(text, "", str(path), begin, end)


def _replaced(text: str, blocks: list[tuple[str, str, str]], where: Path) -> str:
    """``text`` with every ``(block, begin, end)`` replaced (:class:`InputError` naming ``where`` for a missing one)."""
    for block, begin, end in blocks:
        text = replace_block(text, block, str(where), begin, end)
    return text


def final_csv_path(named: str | Path | None) -> Path | None:
    """The final test's CSV: ``named`` (rendering refuses it when absent or unreadable), else :data:`FINAL_CSV` under
    the results where it exists, else None (before the final test)."""
    if named is not None:
        return Path(named)
    default = RESULTS / FINAL_CSV
    return default if default.is_file() else None


def render_blocks(csv_path: Path, final_csv: Path | None = None,
                  ablation_csvs: Sequence[Path] | None = None) -> dict[str, str | None]:
    """Every block, rendered once: ``summary`` and ``report`` (README, development report), ``final`` (None before the
    final test), ``ablation`` (the prior ablation) and ``dev`` (the development ablations, default
    :func:`dev_ablation_csvs`; None without any)."""
    dev = dev_ablation_csvs() if ablation_csvs is None else list(ablation_csvs)
    return {"summary": summary_block(csv_path, final_csv), "report": results_block(csv_path),
            "final": final_block(final_csv) if final_csv else None, "ablation": ablation_block(RESULTS),
            "dev": dev_ablation_block(dev) if dev else None}


def regenerate(csv_path: Path, final_csv: Path | None = None, readme: Path = README, results_doc: Path = RESULTS_DOC,
               ablation_csvs: Sequence[Path] | None = None) -> None:
    """Rewrite README's summary block and ``results_doc``'s report blocks from the CSVs (nothing is written unless
    every CSV renders and every block is in its document)."""
    readme_text = read_text_file(readme, readme.name, 16 * 1024**2)  # the documents must exist before rendering
    doc_text = read_text_file(results_doc, results_doc.name, 16 * 1024**2)
    b = render_blocks(csv_path, final_csv, ablation_csvs)
    doc_blocks = [(b["report"], BEGIN, END)]
    if b["final"]:  # required: a final test without its block is refused, not skipped
        doc_blocks.append((b["final"], FINAL_BEGIN, FINAL_END))
    doc_blocks += [(b[k], begin, end) for k, begin, end in (("ablation", ABL_BEGIN, ABL_END), ("dev", DEV_BEGIN, DEV_END))
                   if b[k] and begin in doc_text]
    new_readme = _replaced(readme_text, [(b["summary"], SUM_BEGIN, SUM_END)], readme)
    new_doc = _replaced(doc_text, doc_blocks, results_doc)  # both replaced in memory before either is written
    for path, text in ((readme, new_readme), (results_doc, new_doc)):
        with atomic_output(path) as tmp:
            tmp.write_text(text)


def blocks_text(csv_path: Path, final_csv: Path | None = None, ablation_csvs: Sequence[Path] | None = None) -> str:
    """Every block, as :func:`regenerate` would write them (for ``make_tables --print``)."""
    b = render_blocks(csv_path, final_csv, ablation_csvs)
    return (f"{b['summary']}\n\n" + (f"{b['final']}\n\n" if b["final"] else "") + f"{b['report']}\n\n{b['ablation']}\n"
            + (f"\n{b['dev']}\n" if b["dev"] else ""))
