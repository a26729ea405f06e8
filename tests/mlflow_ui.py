"""The MLflow UI as a person sees it: a real ``mlflow server`` over a tracking store, opened in
headless Chromium (Debian's ``chromium`` package driven by Playwright; no browser download).

``check_mlflow_ui(store, stages, metric, shots)`` is used by tests/test_mlflow_ui.py on a small
store and by the pipeline test on the demo store the pipeline wrote; both leave their screenshots in
``test-artifacts/`` (:func:`artifacts_dir`), which CI keeps.
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
SAVE_ENV = "GMNR_SAVE_SCREENSHOT"  # =1: also copy the runs table's screenshot into docs/
ARTIFACTS_ENV = "GMNR_TEST_ARTIFACTS"  # where tests leave screenshots for CI (default: test-artifacts/)
EXPAND_BUTTON = "runnamecellrenderer.tsx_46"  # the `+` before a parent run's name (its nested runs)
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


def artifacts_dir(name: str) -> Path:
    """Where a test leaves what CI keeps (screenshots): ``test-artifacts/<name>/`` in the project, or
    under ``$GMNR_TEST_ARTIFACTS``. Emptied first, so it holds this run's files only."""
    root = Path(os.environ.get(ARTIFACTS_ENV) or ROOT / "test-artifacts")
    folder = root / name
    if folder.is_dir():
        for old in folder.glob("*.png"):
            old.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _close_assistant(page) -> None:
    close = page.get_by_role("button", name="Close", exact=True)
    if close.count():  # the assistant side panel: not what these screenshots are about
        close.first.click()


def _unfold_pipelines(page) -> int:
    """Click the ``+`` of every pipeline invocation's row: its stage runs are listed under it."""
    rows = page.get_by_role("row").filter(has_text="pipeline ").all()
    buttons = [row.locator(f'button[data-component-id$="{EXPAND_BUTTON}"]') for row in rows]
    for button in buttons:
        if button.count():
            button.first.click()
    return sum(1 for b in buttons if b.count())


def check_mlflow_ui(store: str | Path, expected_stages: Iterable[str], metric_name: str,
                    shots: str | Path, artifact_root: str | Path | None = None, experiment: str = "gmnr",
                    timeout_s: float = 60, expect_names: Iterable[str] = (), video: str | None = None,
                    docs_name: str | None = None) -> dict:
    """Open the MLflow UI over ``store`` in headless Chromium and check what a person sees.

    ``store``: a SQLite file, a ``sqlite:///`` URI (a ``mlflow server --workers 1`` is started on a
    free port, artifacts under ``artifact_root``, default ``mlartifacts/`` beside the database) or
    the ``http://`` URL of a running server. Checks, each waiting for the React app:

    - the runs table the project links to (``gmnr.tracking.runs_table_url``: Model training mode,
      the project's shared view) lists the experiment; each pipeline invocation's ``+`` unfolds its
      stage runs; a run of every stage in ``expected_stages`` is listed under its name, and every
      name in ``expect_names`` (``evaluate demo/gmnr vdr=false``: model and ablation in the name);
      the ``metric_name`` column is shown, with the value of the newest run that logged it;
    - a train run's page: its name and its parent (the pipeline run);
    - the newest evaluation's page: the metric and its value, and a description linking its train
      run (when it has one); its "Model metrics" tab draws the metric's chart;
    - ``video`` (``<run id>/<artifact path>`` of an MP4): the artifact viewer plays it, and a frame
      drawn from the playing video is not black.

    Screenshots in the folder ``shots``: ``runs.png``, ``train-run.png``, ``evaluate-run.png``,
    ``evaluate-metric.png``, ``video.png``; ``failure.png`` when a check fails. With
    ``GMNR_SAVE_SCREENSHOT=1`` and ``docs_name`` the runs table is also copied to
    ``docs/<docs_name>``. Raises AssertionError (what was missing, the page's URL and text) or
    RuntimeError (no Chromium, no Playwright, server did not start). Returns what it saw.
    """
    from gmnr.tracking import RUNS_TABLE_QUERY
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
    shots = Path(shots)
    shots.mkdir(parents=True, exist_ok=True)
    paths = {k: shots / f"{k}.png" for k in ("runs", "train-run", "evaluate-run", "evaluate-metric", "video")}
    timeout_ms = timeout_s * 1000

    with mlflow_server(store, artifact_root, workdir=shots) as base:
        server_s = time.perf_counter() - started
        experiment_id, by_stage = _runs_by_stage(base, experiment)
        missing = [s for s in stages if s not in by_stage]
        assert not missing, (f"the tracking store has no run of stage(s) {missing} in experiment '{experiment}' "
                             f"(stages present: {sorted(by_stage)})")
        with_metric = [r for runs in by_stage.values() for r in runs if metric_name in r["metrics"]]
        assert with_metric, f"no run in experiment '{experiment}' logged the metric '{metric_name}'"
        metric_run = max(with_metric, key=lambda r: int(r["info"]["start_time"]))
        metric_value = float(metric_run["metrics"][metric_name])
        train_run = max(by_stage.get("train", [None]) or [None], key=lambda r: int(r["info"]["start_time"]) if r else 0)
        seen: dict = {"stages": {}, "names": []}

        def run_page(run_id: str) -> str:
            return f"{base}/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1800, "height": 1300})
            page.set_default_timeout(timeout_ms)
            step = "opening the project's runs table"
            try:
                page.goto(f"{base}/#/experiments/{experiment_id}/runs?{RUNS_TABLE_QUERY}")
                page.get_by_text("matching run").first.wait_for()
                _close_assistant(page)
                step = "unfolding the pipeline runs"
                if by_stage.get("pipeline"):
                    page.get_by_role("row").filter(has_text="pipeline ").first.wait_for()
                    page.wait_for_timeout(500)
                seen["unfolded"] = _unfold_pipelines(page)
                for stage in stages:
                    step = f"looking for a run of stage '{stage}' in the runs table"
                    names = sorted({r["info"].get("run_name", "") for r in by_stage[stage]} - {""})
                    pattern = re.compile("^(" + "|".join(re.escape(n) for n in names) + ")$")
                    found = page.get_by_text(pattern).filter(visible=True).first
                    found.wait_for()
                    seen["stages"][stage] = found.inner_text().strip()
                for name in expect_names:
                    step = f"looking for the run named {name!r} in the runs table"
                    page.get_by_text(name, exact=True).filter(visible=True).first.wait_for()
                    seen["names"].append(name)
                step = f"reading the '{metric_name}' column of the runs table"
                header = page.locator(f'[role="columnheader"][col-id="metrics.`{metric_name}`"]')
                header.first.wait_for()
                # ag-grid renders a row in parts (pinned name, scrolling columns) sharing its row-index
                row = page.get_by_role("row").filter(
                    has=page.get_by_text(metric_run["info"]["run_name"], exact=True)).first
                index = row.get_attribute("row-index")
                cell = page.locator(f'[role="row"][row-index="{index}"] [col-id="metrics.`{metric_name}`"]')
                cell = cell.first.inner_text().strip()
                assert _close_to(cell, metric_value), (
                    f"the runs table shows {cell!r} for {metric_name} of {metric_run['info']['run_name']!r}, "
                    f"expected {metric_value}")
                seen["table_value"] = cell
                page.wait_for_timeout(500)
                page.screenshot(path=str(paths["runs"]))

                if train_run is not None:
                    step = f"opening the train run {train_run['info']['run_name']!r}"
                    page.goto(run_page(train_run["info"]["run_id"]))
                    page.get_by_text(train_run["info"]["run_name"], exact=True).first.wait_for()
                    parent = train_run["tags"].get("mlflow.parentRunId")
                    if parent:
                        step = "finding the train run's parent (the pipeline run) on its page"
                        page.locator(f'a[href*="{parent}"]').first.wait_for()
                    _close_assistant(page)
                    page.wait_for_timeout(500)
                    page.screenshot(path=str(paths["train-run"]))

                step = f"reading '{metric_name}' on the page of run {metric_run['info']['run_id']}"
                page.goto(run_page(metric_run["info"]["run_id"]))
                row = page.get_by_role("row").filter(has=page.get_by_text(metric_name, exact=True)).first
                row.wait_for()
                shown = row.inner_text().replace(metric_name, " ")
                assert _close_to(shown, metric_value), (
                    f"the run page shows {shown.strip()!r} for {metric_name}, expected {metric_value}")
                linked = metric_run["tags"].get("train_run_id")
                if linked:
                    step = "following the evaluation's description to its train run"
                    link = page.get_by_role("link", name="the training run").first
                    link.wait_for()
                    assert linked in (link.get_attribute("href") or ""), link.get_attribute("href")
                _close_assistant(page)
                page.wait_for_timeout(500)
                page.screenshot(path=str(paths["evaluate-run"]))

                step = f"opening the chart of '{metric_name}' on the Model metrics tab"
                tab = page.get_by_role("tab", name="Model metrics")
                (tab if tab.count() else page.get_by_text("Model metrics", exact=True)).first.click()
                page.get_by_text(metric_name, exact=True).filter(visible=True).first.wait_for()
                page.locator("canvas, svg.main-svg, .js-plotly-plot").first.wait_for()
                page.wait_for_timeout(500)
                page.screenshot(path=str(paths["evaluate-metric"]))

                if video:
                    run_id, artifact = video.split("/", 1)
                    step = f"playing the video {artifact} of run {run_id} in the artifact viewer"
                    page.goto(f"{base}/#/experiments/{experiment_id}/runs/{run_id}/artifacts/{artifact}"
                              f"?workflowType=machine_learning")
                    player = page.locator("video").first
                    player.wait_for()
                    seen["video"] = page.evaluate(VIDEO_PROBE, timeout_ms)
                    assert seen["video"].get("playing") and seen["video"].get("width", 0) > 0, seen["video"]
                    assert seen["video"]["mean"] > 20, f"the video plays black: {seen['video']}"
                    _close_assistant(page)
                    page.screenshot(path=str(paths["video"]))
            except (PlaywrightError, AssertionError) as exc:
                try:
                    page.screenshot(path=str(shots / "failure.png"))
                    body = page.inner_text("body")[:1500]
                except PlaywrightError:
                    body = "(page unreadable)"
                raise AssertionError(f"MLflow UI check failed while {step}: {str(exc).splitlines()[0]}\n"
                                     f"URL: {page.url}\nscreenshot: {shots / 'failure.png'}\npage text: {body}") from exc
            finally:
                browser.close()

    if docs_name and os.environ.get(SAVE_ENV) == "1":
        (ROOT / "docs").mkdir(exist_ok=True)
        shutil.copyfile(paths["runs"], ROOT / "docs" / docs_name)
    return {"base_url": base, "experiment_id": experiment_id, **seen, "metric_run_id": metric_run["info"]["run_id"],
            "metric_value": metric_value, "screenshots": {k: v for k, v in paths.items() if v.is_file()},
            "server_start_s": round(server_s, 1), "seconds": round(time.perf_counter() - started, 1)}


def _close_to(text: str, value: float) -> bool:
    """Whether ``text`` shows ``value`` (as the UI rounds it: to 3 significant digits or more)."""
    numbers = [float(x) for x in re.findall(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?", text)]
    return any(abs(n - value) <= max(5e-3 * abs(value), 1e-9) for n in numbers)


# Wait until the page's video plays, then draw its current frame into a canvas: size, and mean brightness.
VIDEO_PROBE = """async (timeoutMs) => {
  const video = document.querySelector('video');
  video.muted = true;
  const deadline = Date.now() + timeoutMs;
  try { await video.play(); } catch (e) {}
  while (Date.now() < deadline && (video.readyState < 2 || video.currentTime <= 0)) {
    await new Promise(r => setTimeout(r, 100));
  }
  const w = video.videoWidth, h = video.videoHeight;
  if (!w) return {playing: false, width: 0, readyState: video.readyState, error: String(video.error && video.error.code)};
  const canvas = document.createElement('canvas');
  canvas.width = w; canvas.height = h;
  const ctx = canvas.getContext('2d');
  ctx.drawImage(video, 0, 0);
  const data = ctx.getImageData(0, 0, w, h).data;
  let sum = 0;
  for (let i = 0; i < data.length; i += 4) sum += (data[i] + data[i + 1] + data[i + 2]) / 3;
  return {playing: video.currentTime > 0, width: w, height: h, time: video.currentTime, mean: sum / (data.length / 4)};
}"""
