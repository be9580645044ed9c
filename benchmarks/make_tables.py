"""Regenerate the results blocks from the protocol results CSVs (no hand-copied number).

Run: ``python benchmarks/make_tables.py`` (default: :data:`benchmarks.tables.DEFAULT_CSV`, the development run, and
:data:`benchmarks.tables.FINAL_CSV`, the registered final test, where it exists) or ``--csv FILE --final-csv FILE``.
The blocks and what goes into them: :mod:`benchmarks.documents`.  ``--print`` writes them to stdout.
"""

from __future__ import annotations

from mri_score.cli import guard_startup

guard_startup(__name__)  # first, before torch: a signal while starting exits quietly

# isort: split
import argparse
import sys
from pathlib import Path

from benchmarks.documents import (
    DEV_ABLATIONS,
    README,
    RESULTS,
    RESULTS_DOC,
    blocks_text,
    dev_ablation_csvs,
    final_csv_path,
    regenerate,
)
from benchmarks.tables import DEFAULT_CSV, FINAL_CSV
from mri_score.cli import exit_on_input_error, one_line_usage_errors


@exit_on_input_error
def main(argv: list[str] | None = None) -> int:
    """Rewrite the README's summary block and docs/results.md's report and ablation blocks from the CSVs."""
    ap = one_line_usage_errors(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    ap.add_argument("--csv", default=None, help=f"the protocol results CSV (default: benchmarks/results/{DEFAULT_CSV})")
    ap.add_argument("--final-csv", default=None,
                    help=f"the registered final test's results CSV (default, with the default --csv only: "
                         f"benchmarks/results/{FINAL_CSV}, skipped while absent; a named file must exist)")
    ap.add_argument("--readme", default=str(README), help="README with the summary block")
    ap.add_argument("--results-doc", default=str(RESULTS_DOC), help="document with the report and ablation blocks")
    ap.add_argument("--ablation-csv", nargs="+", default=None,
                    help=f"the development ablations' results CSVs, one table each (default: those of "
                         f"{', '.join(DEV_ABLATIONS)} under {RESULTS} that exist)")
    ap.add_argument("--print", action="store_true", help="print the blocks instead of rewriting the files")
    args = ap.parse_args(argv)
    csv_path = Path(args.csv) if args.csv else RESULTS / DEFAULT_CSV
    # the committed final test joins the committed development run; a named --csv is rendered alone unless
    # --final-csv is named too
    final_csv = final_csv_path(args.final_csv) if args.final_csv or not args.csv else None
    if args.print:
        sys.stdout.write(blocks_text(csv_path, final_csv, dev_ablation_csvs(args.ablation_csv)))
        return 0
    ablations = dev_ablation_csvs(args.ablation_csv)
    regenerate(csv_path, final_csv, Path(args.readme), Path(args.results_doc), ablations)
    print(f"{args.readme}: summary block, {args.results_doc}: report and ablation blocks rewritten from {csv_path}"
          + (f" and {final_csv}" if final_csv else "")
          + (f"; development ablations from {', '.join(p.name for p in ablations)}" if ablations else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
