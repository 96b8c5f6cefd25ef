"""Render a run's report.html in headless Chromium and save a screenshot (to look at it, or for CI).

    python scripts/screenshot_report.py RUN_DIR [--out PNG] [--width 1400] [--height 2400]

Needs a Chromium binary (`apt-get install chromium` on Debian). Exit status 0 with the PNG written,
1 with one `error:` line otherwise. The page is opened from file://, so this also checks that the
report needs no server and no network (Chromium is started with networking features off).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def find_chromium() -> str | None:
    return next((p for p in map(shutil.which, BROWSERS) if p), None)


def screenshot(html: Path, out: Path, width: int = 1400, height: int = 2400, timeout: float = 120.0) -> Path:
    browser = find_chromium()
    if browser is None:
        raise RuntimeError(f"no Chromium found (tried {', '.join(BROWSERS)}); on Debian: apt-get install chromium")
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="wsisum-chromium-") as profile:
        cmd = [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            f"--screenshot={out}",
            f"--window-size={width},{height}",
            html.resolve().as_uri(),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if not out.is_file() or out.read_bytes()[:8] != PNG_MAGIC:
        tail = " ".join((proc.stderr or proc.stdout).split()[-40:])
        raise RuntimeError(f"Chromium wrote no screenshot (exit {proc.returncode}): {tail}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run_dir", type=Path, help="a wsisum-pipeline run dir with report/report.html")
    ap.add_argument("--out", type=Path, help="PNG to write (default RUN_DIR/report/screenshot.png)")
    ap.add_argument("--width", type=int, default=1400)
    ap.add_argument("--height", type=int, default=2400)
    args = ap.parse_args(argv)
    html = args.run_dir / "report" / "report.html"
    if not html.is_file():
        print(f"error: {html}: no report (run wsisum-report {args.run_dir} first)", file=sys.stderr)
        return 1
    out = args.out or args.run_dir / "report" / "screenshot.png"
    try:
        path = screenshot(html, out, args.width, args.height)
    except (RuntimeError, subprocess.TimeoutExpired, OSError) as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
