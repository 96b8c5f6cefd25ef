"""Render a run's report.html in headless Chromium and save a screenshot (to look at it, or for CI).

    python scripts/screenshot_report.py RUN_DIR [--out PNG] [--width 1400] [--height 2400]

Needs a Chromium binary (`apt-get install chromium` on Debian). Exit status 0 with the PNG written
and every image and table of the page rendered, 1 with one `error:` line otherwise. The page is opened from file://, so this also checks that the
report needs no server and no network (Chromium is started with networking features off).
"""

from __future__ import annotations

import argparse
import html as html_lib
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from wsisum.errors import print_error
from wsisum.run_layout import REPORT_DIR, REPORT_HTML

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def find_chromium() -> str | None:
    return next((p for p in map(shutil.which, BROWSERS) if p), None)


# Appended to a copy of the page (beside the original, so its relative image paths resolve): once
# everything has loaded, it writes what the browser made of the page into the DOM that --dump-dom prints.
PROBE = """<script>
window.addEventListener("load", () => {
  const imgs = [...document.images];
  const broken = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => (i.getAttribute("src") || "").slice(0, 80));
  const tables = [...document.querySelectorAll("table")];
  const empty = tables.filter(t => t.rows.length < 2 || t.getBoundingClientRect().height < 10).length;
  const out = document.createElement("pre");
  out.id = "wsisum-render-check";
  out.textContent = JSON.stringify({images: imgs.length, broken: broken, tables: tables.length, empty_tables: empty});
  document.body.appendChild(out);
});
</script>"""
CHECK_MARK = re.compile(r'<pre id="wsisum-render-check">(.*?)</pre>', re.S)


def _chromium(args: list[str], width: int, height: int, timeout: float) -> subprocess.CompletedProcess:
    browser = find_chromium()
    if browser is None:
        raise RuntimeError(f"no Chromium found (tried {', '.join(BROWSERS)}); on Debian: apt-get install chromium")
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
            f"--window-size={width},{height}",
            *args,
        ]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def render_check(html: Path, timeout: float = 120.0) -> dict:
    """What a real browser made of the page: images (and the broken ones), tables (and the empty ones)."""
    probe = html.with_name(f".render-check-{html.name}")
    probe.write_text(html.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    try:
        proc = _chromium(["--virtual-time-budget=10000", "--dump-dom", probe.resolve().as_uri()], 1400, 2400, timeout)
    finally:
        probe.unlink(missing_ok=True)
    found = CHECK_MARK.search(proc.stdout or "")
    if found is None:
        tail = " ".join((proc.stderr or proc.stdout).split()[-40:])
        raise RuntimeError(f"Chromium gave no page (exit {proc.returncode}): {tail}")
    return json.loads(html_lib.unescape(found.group(1)))


def screenshot(html: Path, out: Path, width: int = 1400, height: int = 2400, timeout: float = 120.0) -> Path:
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    proc = _chromium([f"--screenshot={out}", html.resolve().as_uri()], width, height, timeout)
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
    html = args.run_dir / REPORT_DIR / REPORT_HTML
    if not html.is_file():
        print_error(f"{html}: no report (run wsisum-report {args.run_dir} first)")
        return 1
    out = args.out or args.run_dir / REPORT_DIR / "screenshot.png"
    try:
        path = screenshot(html, out, args.width, args.height)
        check = render_check(html)
    except (RuntimeError, subprocess.TimeoutExpired, OSError) as err:
        print_error(" ".join(str(err).split()))
        return 1
    print(f"wrote {path}; {check['images']} image(s), {check['tables']} table(s) rendered")
    if check["broken"] or check["empty_tables"]:
        print_error(f"{html}: broken images {check['broken']}, {check['empty_tables']} empty table(s)")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
