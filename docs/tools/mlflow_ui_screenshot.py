"""Screenshot of the MLflow UI comparing the protections of one model at one fault rate.

Starts `mlflow ui` on a free local port, finds the FINISHED job runs of one experiment and model
through the REST API, opens them in the UI's "Compare runs" page with headless Chromium, draws the
Scatter Plot x = param `protection.name`, y = the metric (default `acc_mean/ber_1e-05`), and saves a
PNG of the plot with the run details below it. The server is stopped afterwards, also on error.

Needs Playwright for Python (`.venv/bin/pip install playwright`; no `playwright install`: it drives
Debian's Chromium at /usr/bin/chromium).

    .venv/bin/python docs/tools/mlflow_ui_screenshot.py --db mlruns/mlflow.db \
        --experiment repro_cpu --model vgg16 --metric acc_mean/ber_1e-05 --out docs/mlflow_ui.png
"""
import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ORDER = ["none", "ranger", "clipact", "fitact"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api(base, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + "/api/2.0/mlflow/" + path, data=data,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)


def wait_for_server(base, proc, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"mlflow ui exited with code {proc.returncode}")
        try:
            return api(base, "experiments/search", {"max_results": 1})
        except OSError:
            time.sleep(1)
    sys.exit(f"mlflow ui did not answer within {timeout} s")


def find_runs(base, experiment, model):
    """Newest FINISHED job run of every protection, ordered none, ranger, clipact, fitact."""
    name = urllib.parse.quote(experiment)
    exp = api(base, f"experiments/get-by-name?experiment_name={name}")["experiment"]
    exp_id = exp["experiment_id"]
    found = api(base, "runs/search", {
        "experiment_ids": [exp_id], "max_results": 1000, "order_by": ["attributes.start_time DESC"],
        "filter": (f"tags.model = '{model}' and tags.run_kind = 'job'"
                   " and attributes.status = 'FINISHED'"),
    }).get("runs", [])
    by_protection = {}
    for run in found:
        tags = {t["key"]: t["value"] for t in run["data"].get("tags", [])}
        by_protection.setdefault(tags.get("protection", "?"), run["info"]["run_id"])
    keys = sorted(by_protection, key=lambda p: (ORDER.index(p) if p in ORDER else len(ORDER), p))
    return exp_id, [(p, by_protection[p]) for p in keys]


def screenshot(base, exp_id, run_ids, metric, out):
    from playwright.sync_api import sync_playwright

    url = (f"{base}/#/compare-runs?runs={json.dumps(run_ids, separators=(',', ':'))}"
           f"&experiments={json.dumps([exp_id])}")
    with tempfile.TemporaryDirectory() as profile, sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1000})
        page = browser.new_page()
        page.goto(url)
        # hide the "MLflow Assistant" side panel (a third of the width) and its floating button
        page.add_style_tag(content="[data-assistant-ui] { display: none !important; }")
        page.get_by_role("tab", name="Scatter Plot").click()
        for axis, choice in (("#x-axis-selector", "protection.name"), ("#y-axis-selector", metric)):
            page.locator(axis).click()
            page.get_by_role("option", name=choice, exact=True).click()
        page.evaluate("document.activeElement.blur(); window.scrollTo(0, 0)")
        page.wait_for_timeout(2000)  # let plotly draw
        # from the top of the page down to the last row of "Run details" (Duration)
        last = page.get_by_text("Duration:").first.bounding_box()
        page.screenshot(path=out, full_page=True, clip={
            "x": 0, "y": 0, "width": 1400, "height": last["y"] + last["height"] + 24})
        browser.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", default="mlruns/mlflow.db")
    ap.add_argument("--experiment", default="repro_cpu")
    ap.add_argument("--model", default="vgg16")
    ap.add_argument("--metric", default="acc_mean/ber_1e-05")
    ap.add_argument("--out", default="docs/mlflow_ui.png")
    args = ap.parse_args()

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")  # no huey job workers
    mlflow = os.path.join(os.path.dirname(sys.executable), "mlflow")
    proc = subprocess.Popen(
        [mlflow, "ui", "--backend-store-uri", f"sqlite:///{os.path.abspath(args.db)}",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_server(base, proc)
        exp_id, runs = find_runs(base, args.experiment, args.model)
        if not runs:
            sys.exit(f"no FINISHED job runs of model {args.model} in experiment {args.experiment}")
        print("runs:", ", ".join(f"{p}={r}" for p, r in runs))
        screenshot(base, exp_id, [r for _, r in runs], args.metric, args.out)
        print("wrote", args.out)
    finally:  # mlflow ui starts uvicorn as a child: stop the whole process group
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
