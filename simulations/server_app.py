"""The ServerApp: runs an experiment over the Grid (:mod:`simulations.experiment`) into its run folder.

Two ways in, one body (:func:`simulations.experiment.run_experiment`):
- ``fedgen run CONFIG`` builds a ServerApp around an already validated config (:func:`make_server_app`);
- ``flwr run .`` loads the module-level ``app``, which reads the run config keys ``config`` (a YAML path),
  ``set`` (space-separated key=value overrides) and ``out`` (the run folder).
"""

from __future__ import annotations

import json
import shlex
from datetime import datetime
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedgen.config import ConfigError, ExperimentConfig, load_config
from fedgen.results import claim_run_folder
from simulations.experiment import run_experiment

__all__ = ["app", "make_server_app", "run_experiment", "run_overrides"]

APP_ROOT = Path(__file__).resolve().parents[1]


def default_out_dir(cfg: ExperimentConfig) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.name}-{cfg.strategy.name}-s{cfg.seed}-{stamp}"


def _flag(value) -> bool:
    """A run config boolean (TOML's, or a string typed by hand)."""
    return value is True or str(value).lower() in ("true", "1", "yes")


def run_overrides(text: str) -> list[str]:
    """The run config's ``set``: a JSON list of key=value overrides (what ``fedgen deploy run`` sends: any YAML
    value survives, quotes and braces included), or, typed by hand, space-separated shell words."""
    if text.lstrip().startswith("["):
        overrides = json.loads(text)
        if not (isinstance(overrides, list) and all(isinstance(o, str) for o in overrides)):
            raise ConfigError(f"run config 'set': expected a JSON list of 'key=value' strings, got {text!r}")
        return overrides
    return shlex.split(text)


def make_server_app(cfg: ExperimentConfig, out_dir: str | Path, resume: bool = False) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_experiment(grid, cfg, out_dir, resume=resume)

    return app


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    rc = context.run_config
    path = Path(str(rc["config"]))
    if not path.is_absolute() and not path.exists():  # relative to the app (the FAB's folder under `flwr run`)
        path = APP_ROOT / path
    cfg = load_config(path, run_overrides(str(rc.get("set", ""))))
    out = Path(str(rc.get("out", "")) or default_out_dir(cfg)).resolve()  # relative to where the SuperLink started
    resume = _flag(rc.get("resume", False))
    claim_run_folder(out, resume, overwrite=_flag(rc.get("overwrite", False)))
    print(f"[{cfg.strategy.name} seed={cfg.seed}] run folder {out}", flush=True)
    summary = run_experiment(grid, cfg, out, resume=resume)
    print(f"[{cfg.strategy.name} seed={cfg.seed}] run finished: {out}", flush=True)
    if summary["status"] != "finished":
        raise RuntimeError(f"run ended with status {summary['status']}")
