"""Notebook 05's explorers in a real browser: JupyterLab on 127.0.0.1, headless Chromium driven by playwright.

The unit tests (``test_visualise.py``) set the widgets' values from Python; this test goes through what a
reader does. It copies notebook 05 into a temporary folder, runs it in JupyterLab with Run > Run All
Cells, then turns the controls of its three explorers (the image regime, the image number, "next" /
"previous", the model; the common network's threshold and model; the scale explorer's object diameter
slider, seed and model) and checks after each change that

- the figure in the explorer's output changed (the ``<img>`` data URL), and only that explorer's;
- the numbers line shows what the plain functions give for the new control values
  (:func:`dr.explore.analysis.route_of`, :func:`dr.explore.widgets.common_network_figure`,
  :func:`dr.explore.widgets.scale_figure`);
- no cell shows an error and nothing reached JupyterLab's log console (where widget callbacks'
  tracebacks go);
- the browser's console shows no error.

It needs Debian's ``chromium`` (``apt-get install chromium``; playwright's own browser download is not
used) and the python ``playwright`` package, and skips where either is missing. The server and the
browser get a temporary HOME, Jupyter and IPython folders, so nothing is written to the checkout or to
the user's settings; the kernel inherits ``CI=true`` (the notebook's ``fast_run`` settings) and a
``PYTHONPATH`` that puts this checkout's ``dr`` first.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "05_route_explorer.ipynb"
# headless, and nothing that reaches for Google's hosts (the closed network refuses them)
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ROUTE = ".dr-route-explorer"  # the classes the explorers add to their widget box
COMMON = ".dr-common-network-explorer"
SCALE = ".dr-scale-explorer"
EXPLORERS = (ROUTE, COMMON, SCALE)
WAIT_MS = 60_000  # the longest wait for one step (JupyterLab loading, one render); the whole test takes ~60 s
LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # to the local server, never through a proxy


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("no Chromium on PATH: the browser test needs Debian's chromium (apt-get install chromium)")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _environment(home: Path) -> dict[str, str]:
    """The server's (and so the kernel's) environment: its own HOME and Jupyter folders, CI=true,
    this checkout first on PYTHONPATH."""
    env = dict(os.environ)
    env.update(
        HOME=str(home),
        JUPYTER_CONFIG_DIR=str(home / ".jupyter"),
        JUPYTER_DATA_DIR=str(home / ".local" / "share" / "jupyter"),
        JUPYTER_RUNTIME_DIR=str(home / ".local" / "share" / "jupyter" / "runtime"),
        IPYTHONDIR=str(home / ".ipython"),
        CI="true",
        PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
    )
    env.pop("JUPYTER_PATH", None)
    return env


def _settings(config_dir: Path) -> None:
    """JupyterLab user settings: every cell attached to the page (the test reads all outputs), no news."""
    for plugin, values in {
        "notebook-extension/tracker": {"windowingMode": "none"},
        "apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    }.items():
        path = config_dir / "lab" / "user-settings" / "@jupyterlab" / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))


@contextmanager
def _jupyter_lab(root_dir: Path, env: dict[str, str], log: Path):
    """JupyterLab serving ``root_dir`` on 127.0.0.1 with a token; yields its base URL and the token.
    Stopped by its PID on the way out, failure included."""
    port, token = _free_port(), secrets.token_hex(16)
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}"]
    command += ["--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root_dir}"]
    if os.geteuid() == 0:
        command.append("--allow-root")  # CI runs as root
    with open(log, "w") as out:
        server = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + WAIT_MS / 1000
        while True:
            if server.poll() is not None:
                pytest.fail(f"JupyterLab exited with {server.returncode}:\n{log.read_text()[-3000:]}")
            try:
                LOCAL.open(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not answer on port {port}:\n{log.read_text()[-3000:]}")
                time.sleep(0.3)
        yield f"http://127.0.0.1:{port}", token
    finally:
        server.terminate()  # SIGTERM: the server shuts its kernel down, then exits
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _figure(page, explorer: str) -> str:
    """The data URL of the figure an explorer shows."""
    return page.locator(f"{explorer} .widget-output img").get_attribute("src", timeout=WAIT_MS)


def _numbers(page, explorer: str) -> str:
    return page.locator(f"{explorer} .widget-html-content").inner_text(timeout=WAIT_MS)


def _control(page, explorer: str, kind: str, label: str):
    """The input of the explorer's control whose description is ``label`` (kind: the widget's CSS class)."""
    box = page.locator(f"{explorer} .{kind}").filter(has=page.locator(f'label.widget-label:text-is("{label}")'))
    return box.locator("select, input, .widget-readout")


def _cell_errors(page) -> list[str]:
    """Error outputs of the notebook's cells and everything JupyterLab's log console received."""
    stderr = page.locator('.jp-Notebook .jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')
    errors = [t for t in stderr.all_inner_texts() if "Traceback" in t or re.search(r"^\w*(Error|Exception)\b", t, re.M)]
    logged = page.locator(".jp-LogConsolePanel .jp-OutputArea-output").all_inner_texts()
    return errors + [f"log console: {t}" for t in logged]


def _wait_for_kernel(url: str, token: str) -> None:
    """Until the notebook's kernel is idle with the browser connected (the server's REST API says so):
    cells run before that are dropped."""
    deadline = time.monotonic() + WAIT_MS / 1000
    while time.monotonic() < deadline:
        kernels = json.load(LOCAL.open(f"{url}/api/kernels?token={token}", timeout=5))
        if any(k["execution_state"] == "idle" and k["connections"] > 0 for k in kernels):
            return
        time.sleep(0.3)
    pytest.fail(f"no kernel connected to the browser: {kernels}")


# no cell waiting or running, and every code cell numbered or an error shown (Run All stops at the first error); a
# cell whose source is hidden (the exercises' solutions) shows an empty placeholder prompt beside its hidden input's
DONE = """() => {
    const prompt = '.jp-Notebook .jp-CodeCell .jp-InputPrompt:not(.jp-Placeholder-prompt)';
    const prompts = [...document.querySelectorAll(prompt)].map(p => p.textContent);
    const stderr = '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]';
    const failed = [...document.querySelectorAll(stderr)].some(e => /Traceback|Error/.test(e.textContent));
    const numbered = prompts.every(p => /^\\[\\d+\\]:$/.test(p.trim()));
    return prompts.length > 0 && !prompts.some(p => p.includes('*')) && (numbered || failed);
}"""


# an explorer's figure is no longer ``before``, or something reached the log console (a callback's traceback)
CHANGED = """([selector, before]) => {
    const img = document.querySelector(selector + ' .widget-output img');
    const logged = document.querySelectorAll('.jp-LogConsolePanel .jp-OutputArea-output').length;
    return (img !== null && img.src !== before) || logged > 0;
}"""


def _run_all_cells(page, url: str, token: str) -> None:
    """Run > Run All Cells, then wait until every code cell has its execution count."""
    page.wait_for_selector(".jp-Notebook .jp-CodeCell", timeout=WAIT_MS)
    _wait_for_kernel(url, token)
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.locator('.lm-Menu-itemLabel:text-is("Run All Cells")').click()
    page.wait_for_function(DONE, timeout=3 * WAIT_MS)
    page.wait_for_selector('.jp-Notebook-ExecutionIndicator[data-status="idle"]', timeout=WAIT_MS)


def _change(page, console: list[str], explorer: str, action) -> tuple[str, str]:
    """Do ``action`` on ``explorer``'s controls and wait for its figure to change; no error anywhere, new
    numbers, the other explorers' figures as they were. Returns the new figure and numbers."""
    figure, numbers = _figure(page, explorer), _numbers(page, explorer)
    unchanged = {other: _figure(page, other) for other in EXPLORERS if other != explorer}
    action()
    page.wait_for_function(CHANGED, arg=[explorer, figure], timeout=WAIT_MS)
    page.wait_for_selector('.jp-Notebook-ExecutionIndicator[data-status="idle"]', timeout=WAIT_MS)
    assert _cell_errors(page) == [], "an error output appeared"
    assert console == [], f"the browser logged errors: {console}"
    after = _figure(page, explorer), _numbers(page, explorer)
    assert after[0].startswith("data:image/png;base64,") and after[0] != figure
    assert after[1] != numbers, "a new figure comes with new numbers"
    assert {other: _figure(page, other) for other in unchanged} == unchanged
    return after


def _route_numbers(run, name: str, sample) -> list[str]:
    """What the route explorer's numbers line must say for ``sample`` under ``run`` (named ``name``)."""
    from dr.explore.analysis import route_of

    info = route_of(run.model, sample, route=run.route)
    return [name, info.name, f"{len(info.open_paths)} of {len(run.space.paths)} paths open", info.cost_text()]


def _common_numbers(run, name: str, threshold: float) -> list[str]:
    """What the common network explorer's numbers line must say for ``run`` at ``threshold``."""
    from dr.explore.widgets import common_network_figure

    numbers = common_network_figure(run, threshold)[1]
    paths = f"{numbers['paths']} of {len(run.space.paths)} paths"
    return [f"{name}, threshold {threshold:.2f}", paths, f"{numbers['gflops']:.4f} GFLOPs"]


def _scale_numbers(run, name: str, diameter: int, seed: int) -> list[str]:
    """What the scale explorer's numbers line must say for ``run`` at ``diameter`` pixels and ``seed``."""
    from dr.explore.widgets import scale_figure

    n = scale_figure(run, diameter, seed, name)[1]
    return [
        f"{name}, objects of {diameter} px (measured {n['size']:.1f} px), seed {seed}",
        f"{n['paths']} of {len(run.space.paths)} paths open, fine-scale share {n['fine_share']:.0%}",
        f"{n['computed']} of {len(run.space.nodes)} cells computed, {n['bypassed']} bypassed",
        f"real {n['gflops']:.4f} GFLOPs",
    ]


def test_notebook_05_explorers_answer_their_controls_in_a_browser(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs python's playwright")
    pytest.importorskip("jupyterlab")
    chromium = _chromium()
    from dr.data.synthetic import SyntheticShapes
    from dr.explore.figures import DISPLAY
    from dr.explore.runs import load_run

    started = time.monotonic()
    home, work = tmp_path / "home", tmp_path / "work"
    (work / "notebooks").mkdir(parents=True)
    shutil.copy(NOTEBOOK, work / "notebooks")  # the notebook runs on a copy, beside the figures its text shows
    for name in re.findall(r"\]\(\.\./figures/([\w.]+)\)", NOTEBOOK.read_text()):
        (work / "figures").mkdir(exist_ok=True)
        shutil.copy(ROOT / "figures" / name, work / "figures" / name)
    env = _environment(home)
    _settings(Path(env["JUPYTER_CONFIG_DIR"]))
    kernel_dr = subprocess.run(
        [sys.executable, "-c", "import dr; print(dr.__file__)"], env=env, capture_output=True, text=True, check=True
    )
    assert Path(kernel_dr.stdout.strip()).is_relative_to(ROOT), f"the kernel would import {kernel_dr.stdout}"

    console: list[str] = []  # the browser's console errors and uncaught exceptions
    with _jupyter_lab(work, env, tmp_path / "jupyter.log") as (url, token), sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium"),  # a fresh profile
            executable_path=chromium,
            headless=True,
            args=CHROMIUM_FLAGS,
            env=env,
            viewport={"width": 1400, "height": 1000},
        )
        page = browser.pages[0] if browser.pages else browser.new_page()
        page.on("console", lambda m: console.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: console.append(f"uncaught: {e}"))
        try:
            page.goto(f"{url}/lab/tree/notebooks/{NOTEBOOK.name}?token={token}")
            _run_all_cells(page, url, token)
            ran = time.monotonic() - started
            assert _cell_errors(page) == [] and console == []
            assert "all checks passed" in page.locator(".jp-Notebook").inner_text()
            page.get_by_role("menuitem", name="View", exact=True).click()  # where widget callbacks' tracebacks go
            page.locator('.lm-Menu-itemLabel:text-is("Show Log Console")').click()
            page.wait_for_selector(".jp-LogConsolePanel", timeout=WAIT_MS)

            # the notebook's models (named Dynamic-<budget>, the shipped checkpoints/tiny-<budget>) and data
            models = _control(page, ROUTE, "widget-dropdown", "model").locator("option").all_inner_texts()
            assert models[0] == "Dynamic-A" and len(models) >= 3, models
            shipped = {display: key for key, display in DISPLAY.items()}  # "Dynamic-Raw" -> "raw"
            runs = {name: load_run(ROOT / "checkpoints" / f"tiny-{shipped[name]}") for name in models}
            first = runs[models[0]]
            val = SyntheticShapes("val", seed=first.config.seed, size=first.config.val_size)
            large = [i for i in range(len(val)) if val.regime(i) == "large"]

            # the controls, as a reader uses them
            def select(explorer: str, label: str, option: str):
                return lambda: _control(page, explorer, "widget-dropdown", label).select_option(option)

            def click(explorer: str, button: str):
                return lambda: page.locator(f"{explorer} button:text-is('{button}')").click()

            def type_into(control, value: str):
                def action():
                    control.click()
                    page.keyboard.press("Control+A")
                    page.keyboard.type(value)
                    page.keyboard.press("Enter")

                return action

            # the route explorer: regime, image number, next, previous, model
            def route_step(action, name: str, index: int) -> str:
                figure, text = _change(page, console, ROUTE, action)
                assert all(part in text for part in _route_numbers(runs[name], name, val[index])), text
                return figure

            image = _control(page, ROUTE, "widget-text", "image")
            route_step(select(ROUTE, "images", "large"), models[0], large[0])
            assert image.input_value() == "0", "another regime starts at its first image"
            third = route_step(type_into(image, "3"), models[0], large[3])
            route_step(click(ROUTE, "next"), models[0], large[4])
            assert image.input_value() == "4"
            again = route_step(click(ROUTE, "previous"), models[0], large[3])
            assert again == third, "the same model and image draw the same figure again"
            route_step(select(ROUTE, "model", models[1]), models[1], large[3])

            # the common network: the threshold (typed into the slider's readout), then the model
            def common_step(action, name: str, threshold: float) -> None:
                _, text = _change(page, console, COMMON, action)
                assert all(part in text for part in _common_numbers(runs[name], name, threshold)), text

            common_step(type_into(_control(page, COMMON, "widget-slider", "threshold"), "0.50"), models[0], 0.5)
            common_step(select(COMMON, "model", models[2]), models[2], 0.5)

            # the scale explorer: the diameter (typed into the slider's readout), the seed, the model
            def scale_step(action, name: str, diameter: int, seed: int) -> None:
                _, text = _change(page, console, SCALE, action)
                assert all(part in text for part in _scale_numbers(runs[name], name, diameter, seed)), text

            slider = _control(page, SCALE, "widget-slider", "diameter")
            scale_step(type_into(slider, "256"), models[0], 256, 0)
            assert slider.inner_text() == "256"
            scale_step(type_into(_control(page, SCALE, "widget-text", "seed"), "3"), models[0], 256, 3)
            scale_step(select(SCALE, "model", models[1]), models[1], 256, 3)
        except Exception:
            page.screenshot(path=str(tmp_path / "failure.png"))
            raise
        finally:
            browser.close()
    took = time.monotonic() - started
    print(f"browser test: notebook 05 ran in {ran:.0f} s, {took:.0f} s in all")
