"""The MLflow UI as a person sees it: a real ``mlflow server`` over a tracking store, opened in
headless Chromium (Debian's ``chromium`` package driven by Playwright; no browser download).

``check_mlflow_ui(store, stages, metric, screenshot)`` is used by tests/test_mlflow_ui.py on a
small store and by the pipeline test on the demo store the pipeline wrote.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_ENV = "GMNR_CHROMIUM"  # a browser binary other than the one on PATH
SAVE_ENV = "GMNR_SAVE_SCREENSHOT"  # =1: also copy the screenshot into docs/
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
INSTALL_HINT = ("install Debian's chromium (`apt-get install -y chromium`, which `make chromium` and `make test` "
                "do), or set GMNR_CHROMIUM to a Chromium binary; `playwright install` is not needed")


def find_chromium() -> str | None:
    for candidate in (os.environ.get(CHROMIUM_ENV), "chromium", "chromium-browser", "google-chrome"):
        if candidate and (path := shutil.which(candidate)):
            return path
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _store_uri(store: str | Path) -> str:
    text = str(store)
    if re.match(r"^[a-z+]+://", text):
        return text
    return f"sqlite:///{Path(text).resolve()}"


def _get_json(url: str, body: dict | None = None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=20) as response:
        return json.load(response)


@contextmanager
def mlflow_server(store: str | Path, artifact_root: str | Path | None = None, workdir: Path | None = None,
                  timeout_s: float = 60) -> Iterator[str]:
    """``mlflow server --workers 1`` on a free 127.0.0.1 port; yields its base URL.

    An ``http(s)://`` store is an already running server: it is used as it is.
    """
    uri = _store_uri(store)
    if uri.startswith(("http://", "https://")):
        yield uri.rstrip("/")
        return
    if artifact_root is None:
        artifact_root = Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts" if uri.startswith("sqlite:") \
            else Path(workdir or ".") / "mlartifacts"
    artifact_uri = str(artifact_root) if re.match(r"^[a-z0-9+]+:/", str(artifact_root)) \
        else Path(artifact_root).resolve().as_uri()
    workdir = Path(workdir or Path(uri.removeprefix("sqlite:///")).parent)
    port = _free_port()
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    log_path = workdir / f"mlflow-server-{port}.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--workers", "1", "--host", "127.0.0.1",
                                   "--port", str(port), "--backend-store-uri", uri,
                                   "--default-artifact-root", artifact_uri],
                                  cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                urllib.request.urlopen(base + "/health", timeout=2).read()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    tail = log_path.read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"mlflow server on {uri} did not come up "
                                       f"(exit status {server.poll()}); its log ends:\n{tail}") from None
                time.sleep(0.3)
        yield base
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _runs_by_stage(base: str, experiment_name: str) -> tuple[str, dict[str, list[dict]]]:
    got = _get_json(f"{base}/api/2.0/mlflow/experiments/get-by-name?"
                    + urllib.parse.urlencode({"experiment_name": experiment_name}))
    experiment_id = got["experiment"]["experiment_id"]
    runs, token = [], None
    while True:
        body = {"experiment_ids": [experiment_id], "max_results": 1000, "order_by": ["attributes.start_time DESC"]}
        if token:
            body["page_token"] = token
        page = _get_json(f"{base}/api/2.0/mlflow/runs/search", body)
        runs += page.get("runs", [])
        token = page.get("next_page_token")
        if not token:
            break
    by_stage: dict[str, list[dict]] = {}
    for run in runs:
        tags = {t["key"]: t["value"] for t in run["data"].get("tags", [])}
        run["tags"] = tags
        run["metrics"] = {m["key"]: m["value"] for m in run["data"].get("metrics", [])}
        by_stage.setdefault(tags.get("stage", ""), []).append(run)
    return experiment_id, by_stage


def check_mlflow_ui(store: str | Path, expected_stages: Iterable[str], metric_name: str,
                    screenshot_path: str | Path, artifact_root: str | Path | None = None,
                    experiment: str = "gmnr", timeout_s: float = 45, docs_name: str | None = None) -> dict:
    """Open the MLflow UI over ``store`` in headless Chromium and check what a person would see.

    ``store``: a SQLite file, a ``sqlite:///`` URI (a ``mlflow server --workers 1`` is started
    on a free port, artifacts under ``artifact_root``, default ``mlartifacts/`` beside the
    database) or the ``http://`` URL of a running server. Checks, each waiting for the React app:

    - the experiment's runs table shows the experiment name and a run of every stage in
      ``expected_stages`` (run names are ``<stage>:<dataset>``);
    - the page of the latest run that logged ``metric_name`` lists that metric with its value,
      and its "Model metrics" tab draws a chart titled with it.

    Screenshots: the runs table at ``screenshot_path``, the run's metrics at
    ``<stem>-metric.png`` beside it, and ``<stem>-failure.png`` when a check fails. With
    ``GMNR_SAVE_SCREENSHOT=1`` and ``docs_name``, the runs table is also copied to
    ``docs/<docs_name>``. Raises AssertionError (what was missing, the page's URL and text) or
    RuntimeError (no Chromium, no Playwright, server did not start). Returns what it saw.
    """
    started = time.perf_counter()
    chromium = find_chromium()
    if chromium is None:
        raise RuntimeError(f"no Chromium on PATH for the MLflow UI check: {INSTALL_HINT}")
    try:
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        raise RuntimeError(f"the Python package playwright is missing ({exc}): pip install -r requirements.txt") \
            from exc
    stages = list(expected_stages)
    screenshot_path = Path(screenshot_path)
    screenshot_path.parent.mkdir(parents=True, exist_ok=True)
    metric_shot = screenshot_path.with_name(f"{screenshot_path.stem}-metric{screenshot_path.suffix}")
    failure_shot = screenshot_path.with_name(f"{screenshot_path.stem}-failure{screenshot_path.suffix}")
    timeout_ms = timeout_s * 1000

    with mlflow_server(store, artifact_root, workdir=screenshot_path.parent) as base:
        server_s = time.perf_counter() - started
        experiment_id, by_stage = _runs_by_stage(base, experiment)
        missing = [s for s in stages if s not in by_stage]
        assert not missing, (f"the tracking store has no run of stage(s) {missing} in experiment '{experiment}' "
                             f"(stages present: {sorted(by_stage)})")
        with_metric = [r for runs in by_stage.values() for r in runs if metric_name in r["metrics"]]
        assert with_metric, f"no run in experiment '{experiment}' logged the metric '{metric_name}'"
        metric_run = max(with_metric, key=lambda r: int(r["info"]["start_time"]))
        metric_value = float(metric_run["metrics"][metric_name])
        newest = max((r for runs in by_stage.values() for r in runs),
                     key=lambda r: int(r["info"]["start_time"]))["info"].get("run_name") or experiment

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1440, "height": 1200})
            page.set_default_timeout(timeout_ms)
            step = "opening the runs table"
            try:
                runs_url = f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
                page.goto(runs_url)
                page.get_by_text(experiment, exact=True).filter(visible=True).first.wait_for()
                step = f"waiting for the newest run, {newest!r}, at the top of the runs table"
                page.get_by_text(newest, exact=True).filter(visible=True).first.wait_for()
                seen = {}
                for stage in stages:
                    step = f"looking for a run of stage '{stage}' in the runs table"
                    names = sorted({r["info"].get("run_name", "") for r in by_stage[stage]} - {""})
                    pattern = re.compile("^(" + "|".join(re.escape(n) for n in names) + ")$") if names \
                        else re.compile(rf"^{re.escape(stage)}:")
                    found = page.get_by_text(pattern).filter(visible=True).first
                    try:
                        found.wait_for(timeout=3000)  # the table is there: a row either is or is not
                    except PlaywrightError:  # a long table: ask the UI for this stage's runs only
                        search = urllib.parse.quote(f"tags.stage = '{stage}'")
                        page.goto(f"{runs_url}&searchFilter={search}")
                        found = page.get_by_text(pattern).filter(visible=True).first
                        found.wait_for()
                    seen[stage] = found.inner_text().strip()
                step = "showing the whole runs table again for the screenshot"
                page.goto(f"{runs_url}&searchFilter=")  # the UI keeps the last filter unless told
                page.get_by_text(experiment, exact=True).filter(visible=True).first.wait_for()
                page.get_by_text(newest, exact=True).filter(visible=True).first.wait_for()
                close = page.get_by_role("button", name="Close", exact=True)
                if close.count():  # the assistant side panel: not what this screenshot is about
                    close.first.click()
                page.wait_for_timeout(500)
                page.screenshot(path=str(screenshot_path))

                step = f"reading metric '{metric_name}' on the page of run {metric_run['info']['run_id']}"
                run_id = metric_run["info"]["run_id"]
                page.goto(f"{base}/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning")
                row = page.get_by_role("row").filter(has=page.get_by_text(metric_name, exact=True)).first
                row.wait_for()
                shown = row.inner_text().replace(metric_name, " ")
                numbers = [float(x) for x in re.findall(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?", shown)]
                assert any(abs(n - metric_value) <= 1e-3 * max(1e-12, abs(metric_value)) for n in numbers), (
                    f"the run page shows {shown.strip()!r} for {metric_name}, expected {metric_value}")

                step = f"opening the chart of '{metric_name}' on the Model metrics tab"
                tab = page.get_by_role("tab", name="Model metrics")
                (tab if tab.count() else page.get_by_text("Model metrics", exact=True)).first.click()
                page.get_by_text(metric_name, exact=True).filter(visible=True).first.wait_for()
                page.locator("canvas, svg.main-svg, .js-plotly-plot").first.wait_for()
                page.wait_for_timeout(500)
                page.screenshot(path=str(metric_shot))
            except (PlaywrightError, AssertionError) as exc:
                try:
                    page.screenshot(path=str(failure_shot))
                    body = page.inner_text("body")[:1500]
                except PlaywrightError:
                    body = "(page unreadable)"
                raise AssertionError(f"MLflow UI check failed while {step}: {str(exc).splitlines()[0]}\n"
                                     f"URL: {page.url}\nscreenshot: {failure_shot}\npage text: {body}") from exc
            finally:
                browser.close()

    if docs_name and os.environ.get(SAVE_ENV) == "1":
        (ROOT / "docs").mkdir(exist_ok=True)
        shutil.copyfile(screenshot_path, ROOT / "docs" / docs_name)
    return {"base_url": base, "experiment_id": experiment_id, "stages": seen, "metric_run_id":
            metric_run["info"]["run_id"], "metric_value": metric_value, "screenshots": [screenshot_path, metric_shot],
            "server_start_s": round(server_s, 1), "seconds": round(time.perf_counter() - started, 1)}
