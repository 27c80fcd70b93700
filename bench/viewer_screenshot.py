"""Screenshot of the viewer for the README: a real server, the shipped weights, headless Chromium.

    python bench/viewer_screenshot.py --hash "map=8/37.6/-122.2&world=earth" --out docs/viewer.jpg

Needs Debian's chromium and chromium-driver (scripts/install-system-deps.sh) and selenium.
"""

from __future__ import annotations

import argparse
import io
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hash", default="map=8/37.6/-122.2&world=earth")
    parser.add_argument("--page", default="/")
    parser.add_argument("--cache-dir", type=Path, default=Path("build/demo-cache"))
    parser.add_argument("--size", default="1200x700")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--out", type=Path, default=Path("docs/viewer.jpg"))
    args = parser.parse_args(argv)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "tileserver.cli", "-q", "serve", "--port", str(port),
                               "--cache-dir", str(args.cache_dir), "--threads", "2"])
    width, height = (int(v) for v in args.size.split("x"))
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", f"--window-size={width},{height}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path="/usr/bin/chromedriver"))
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                httpx.get(url + "/health", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                time.sleep(0.5)
        driver.set_page_load_timeout(args.timeout)
        driver.get(f"{url}{args.page}#{args.hash}")
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            state = driver.execute_script("return window.TileViewer && window.TileViewer.state")
            if state and (state["ready"] or state["errors"]):
                break
            time.sleep(1)
        time.sleep(1.5)
        image = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        image.save(args.out, quality=85)
        print(f"wrote {args.out} ({image.size[0]}x{image.size[1]}); state {state}")
    finally:
        driver.quit()
        server.terminate()
        server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
