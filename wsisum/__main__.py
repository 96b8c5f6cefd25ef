"""`wsisum` / `python -m wsisum`: the version (`--version`) and the console scripts, one line each.

Cheap: it imports neither torch, Lightning nor Hydra.
"""

from __future__ import annotations

import argparse

from wsisum import __version__

COMMANDS = {
    "wsisum-synth": "a synthetic cohort",
    "wsisum-check": "a cohort, checked before a long run",
    "wsisum-train": "pretrain the summarizer",
    "wsisum-summarize": "one summary bag per slide",
    "wsisum-evaluate": "MIL on full bags or summaries",
    "wsisum-retrieve": "slide retrieval on full bags or summaries",
    "wsisum-pipeline": "the whole study and its report",
    "wsisum-report": "the report of a study",
    "wsisum-export": "summaries as QuPath annotations / CSV",
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="wsisum",
        description="Whole-slide-image summarization. Every stage is its own Hydra app:",
        epilog="\n".join(f"  {name:<18}{what}" for name, what in COMMANDS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"wsisum {__version__}")
    parser.parse_args(argv)
    parser.print_help()


if __name__ == "__main__":
    main()
