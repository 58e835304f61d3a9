"""`xscreen demo`: the whole chain on embedded defaults, each step the same `xscreen` command a user would
type (so the demo shows the commands, and each step runs in its own process: the lane steps stay free of
torch).

Data → synthetic bags → TIP into real scans → train (the tiny config: the loop end to end, not a useful
model) → evaluate → calibrate → export to an ONNX package → predict with ONNX Runtime → the lane service
with a station streaming bags to it.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import typer


@dataclass(frozen=True)
class Step:
    title: str
    argv: tuple[str, ...]
    needs: Path | None = None  # a path that must exist for the step to make sense


def _shared_real() -> Path:
    # ../shared beside the checkout (the development set of real scans); absent on other machines.
    return Path(__file__).resolve().parents[2] / "shared" / "xray-real"


def _configs() -> Path:
    return Path(__file__).resolve().parents[1] / "configs"


def demo_steps(out: Path) -> list[Step]:
    """The offline steps, in order, writing under `out`."""
    real = _shared_real()
    run = out / "run"
    return [
        Step("Inspect real SIXray scans (VOC + csv)", ("data", "inspect", str(real / "sixray"), "--sheet", str(out / "sixray-sheet.png")), real / "sixray"),
        Step("Convert real OPIXray annotations to COCO", ("data", "convert", str(real / "opixray"), "--to", "coco", "--out", str(out / "opixray-coco.json")), real / "opixray"),
        Step("Synthesise 24 dual-energy bags (both palettes)", ("synth", "--out", str(out / "synth"), "--bags", "24", "--seed", "1", "--palette", "mixed", "--size", "512", "--workers", "2")),
        Step("Project contraband into real PIDray scans (TIP)", ("tip", "--scans", str(real / "pidray"), "--out", str(out / "tip"), "--seed", "1", "--per-scan", "2"), real / "pidray"),
        Step("Train the detector (configs/tiny.yaml: the loop end to end)", ("train", "--config", str(_configs() / "tiny.yaml"), "--out", str(run), "--overwrite")),
        Step("Evaluate on the synthetic set", ("eval", "--model", str(run / "last.ckpt"), "--data", str(out / "synth"), "--json", str(out / "eval.json"), "--plots", str(out / "plots"))),
        Step("Calibrate thresholds for 5 % bag false alarms", ("calibrate", "--model", str(run / "last.ckpt"), "--data", str(out / "synth"), "--target-pfa", "0.05", "--out", str(out / "calibrated.ckpt"))),
        Step("Export the ONNX model package (parity gate first)", ("export", str(out / "calibrated.ckpt"), "--out", str(out / "model.onnx"))),
        Step("Predict with ONNX Runtime (no torch)", ("predict", str(out / "synth" / "images"), "--model", str(out / "model.onnx"), "--json", str(out / "predictions.json"), "--overlays", str(out / "overlays"))),
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _xscreen(*argv: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vision.cli", *argv], **kwargs)


def run_lane(out: Path, console, *, bags: int = 16) -> bool:
    """Start the lane service on loopback with the exported package, stream `bags` bags from a simulated
    station, stop the service. Returns True on success. Each run starts a fresh lane under `out`/lane (the
    previous run's database already holds the demo station, and a second add-station of a name is refused)."""
    lane = out / "lane"
    db = f"sqlite:///{(lane / 'xscreen.db').resolve()}"
    shutil.rmtree(lane, ignore_errors=True)
    lane.mkdir(parents=True)
    console.print(f"$ xscreen admin add-station demo-lane --db {db} --data-dir {lane}", style="cyan")
    proc = _xscreen("admin", "add-station", "demo-lane", "--db", db, "--data-dir", str(lane), capture_output=True, text=True)
    if proc.returncode != 0:
        console.print(proc.stdout + proc.stderr)
        return False
    key = proc.stdout.strip().splitlines()[-1]
    port = _free_port()
    argv = ("serve", "--model", str(out / "model.onnx"), "--db", db, "--data-dir", str(lane), "--tdr-dir", str(lane / "tdr"),
            "--host", "127.0.0.1", "--port", str(port))
    console.print(f"$ xscreen {shlex.join(argv)} &", style="cyan")
    log = (lane / "serve.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "vision.cli", *argv], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{url}/readyz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        else:
            console.print(f"[red]the service did not become ready; see {lane / 'serve.log'}")
            return False
        console.print(f"$ xscreen station --url {url} --key xs_st_… --lanes 2 --rate 4 --source synth --bags {bags} --stream", style="cyan")
        station = _xscreen("station", "--url", url, "--key", key, "--lanes", "2", "--rate", "4", "--source", "synth", "--bags", str(bags),
                           "--stream")
        console.print()  # the station's live table may leave the cursor on its last line
        reports = sorted((lane / "tdr").glob("*.dcs")) if (lane / "tdr").is_dir() else []
        console.print(f"{len(reports)} DICOS threat reports (one per alarmed bag) in {lane / 'tdr'}")
        console.print(f"review UI: {url}/login (create a supervisor with `xscreen admin add-user NAME --role supervisor --db {db}`)")
        return station.returncode == 0
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def run_demo(out: Path) -> int:
    """Run every step; returns the number of failed steps."""
    from rich.console import Console

    console = Console()
    out.mkdir(parents=True, exist_ok=True)
    failures = 0
    steps = demo_steps(out)
    for i, step in enumerate(steps, 1):
        console.rule(f"[bold]{i}. {step.title}")
        if step.needs is not None and not step.needs.exists():
            console.print(f"[yellow]skipped: {step.needs} is not on this machine")
            continue
        console.print(f"$ xscreen {shlex.join(step.argv)}", style="cyan")
        t0 = time.perf_counter()
        proc = _xscreen(*step.argv, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        dt = time.perf_counter() - t0
        if proc.returncode != 0:
            failures += 1
            console.print(f"[red]failed (exit {proc.returncode}) after {dt:.1f} s")
        else:
            console.print(f"[green]done in {dt:.1f} s")
    console.rule(f"[bold]{len(steps) + 1}. The lane service, with a simulated station streaming synthetic bags")
    if (out / "model.onnx").exists():
        t0 = time.perf_counter()
        ok = run_lane(out, console)
        failures += 0 if ok else 1
        console.print(f"[green]done in {time.perf_counter() - t0:.1f} s" if ok else "[red]failed")
    else:
        console.print("[yellow]skipped: no model package was exported")
        failures += 1
    console.print(f"\nOutputs are in {out.resolve()}")
    return failures


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(out: Path = typer.Option(Path("demo-out"), help="Folder for everything the demo writes.")) -> None:
        """Run the whole chain on embedded defaults and say what each step produced."""
        raise typer.Exit(code=1 if run_demo(out) else 0)
