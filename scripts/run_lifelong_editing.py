#!/usr/bin/env python
"""Lifelong editing from the command line (Hydra).

    python scripts/run_lifelong_editing.py alg_name=WISE data=zsre ds_size=100 sequential_edit=true \
        hparams.edit_lr=0.5 output_dir=outputs/wise-100
    python scripts/run_lifelong_editing.py -m alg_name=WISE,MEMOIR ds_size=10,100

Writes ``<output_dir>/results.json`` and prints a summary table.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

if TYPE_CHECKING:
    from wise_edit import HyperParams

ROOT = Path(__file__).resolve().parents[1]


def _project_path(value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() else ROOT / path


#: run settings that must be whole numbers or booleans, with their least value
INTEGERS = {"ds_size": 1, "checkpoint_every": 0}
BOOLEANS = ("sequential_edit", "eval_generation", "progress", "save_edits", "nloc", "use_chat_template", "subjects")


def check_settings(cfg: DictConfig) -> None:
    """Refuse run settings of the wrong type or range, naming the setting (before any model is loaded)."""
    from wise_edit.errors import RunError
    from wise_edit.registry import registered_methods

    for name, least in INTEGERS.items():
        value = cfg[name]
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise RunError(f"{name} must be a whole number >= {least}, got {value!r}")
    for name in BOOLEANS:
        if not isinstance(cfg[name], bool):
            raise RunError(f"{name} must be true or false, got {cfg[name]!r}")
    if not cfg.hparams_file and cfg.alg_name not in registered_methods():
        raise RunError(f"unknown alg_name {cfg.alg_name!r}; registered methods: {', '.join(registered_methods())}")


def _same_form(name: str, path: str, records, data_path: Path, requests: list[dict], role: str):
    """Unedited questions of the edits' form from records [start, stop) of ``path``.

    Questions the edit file also asks are left out (a fixed set whatever T); when ``path`` is the edit file
    itself (a dev stream drawn from the train file), the ranges must not overlap the stream's own edits.
    """
    from wise_edit.data import DataError, load_same_form

    path = _project_path(path)
    found = load_same_form(name, path, tuple(records), data_path)
    edited = {r.prompt for r in requests}
    clash = [p for p in found.prompts if p in edited]
    if clash:
        raise DataError(f"{path}: {len(clash)} {role} question(s) of records {list(records)} are edits of this "
                        f"stream (e.g. {clash[0]!r}); choose records outside the edited ones")
    return found


def run_inputs(cfg: DictConfig) -> tuple:
    """What a run configuration edits and probes: (the dataset, its requests given their same-form negatives;
    the negatives; the neighbourhood probes), each ``None`` where the configuration has none."""
    from wise_edit.data import add_negatives, load_dataset

    data_path = _project_path(cfg.data_path or cfg.data.path)
    loc_path = _project_path(cfg.loc_path or cfg.data.loc_path) if (cfg.loc_path or cfg.data.loc_path) else None
    dataset = load_dataset(cfg.data.name, data_path, cfg.ds_size, loc_path, cfg.data.get("loc_offset", 0),
                           cfg.data.get("first_record", 0), cfg.data.get("stream", "first"),
                           cfg.data.get("last_record"))
    if not cfg.subjects:
        dataset.requests[:] = [r.replace(subject=None) for r in dataset.requests]
        dataset.extra["subjects"] = False
    negatives = probes = None
    if cfg.data.get("negatives_path"):
        negatives = _same_form(cfg.data.name, cfg.data.negatives_path, cfg.data.negative_records, data_path,
                               dataset.requests, "negative")
        add_negatives(dataset.requests, negatives)
    if cfg.nloc and cfg.sequential_edit and cfg.data.get("nloc_path"):
        probes = _same_form(cfg.data.name, cfg.data.nloc_path, cfg.data.nloc_records, data_path, dataset.requests,
                            "neighbourhood probe")
    return dataset, negatives, probes


def relation_inputs(cfg: DictConfig, dataset) -> tuple:
    """The run's same-subject probes (rloc) and the dev same-subject pairs its calibrations read, each ``None``
    where the data group has none."""
    from wise_edit.data import relation_probes, same_subject_pairs

    probes = pairs = None
    if cfg.nloc and cfg.sequential_edit and cfg.data.get("rloc"):
        edited = dataset.extra.get("records") or list(range(cfg.data.get("first_record", 0),
                                                            cfg.data.get("first_record", 0) + len(dataset.requests)))
        probes = relation_probes(cfg.data.name, dataset.path, edited)
    if cfg.data.get("same_subject_path"):
        start, stop = cfg.data.same_subject_records
        pairs = same_subject_pairs(cfg.data.name, _project_path(cfg.data.same_subject_path), start, stop)
    return probes, pairs


def saved_run_inputs(run_dir: Path, ds_size: int) -> tuple[DictConfig, tuple]:
    """The configuration the CLI saved when the run in ``run_dir`` started (``.hydra/config.yaml``), set to its
    first ``ds_size`` records, and its :func:`run_inputs`: for reading a run that has not finished."""
    cfg = OmegaConf.load(Path(run_dir) / ".hydra" / "config.yaml")
    cfg.ds_size = ds_size
    return cfg, run_inputs(cfg)


def saved_run_data(run_dir: Path, ds_size: int) -> tuple:
    """The first ``ds_size`` requests of the CLI run in ``run_dir`` as (dataset, neighbourhood probes or ``None``,
    whether the run used the chat template, whether the data files were checked against the hashes its
    ``results.json`` recorded). A run without ``results.json`` (unfinished) is read from its saved configuration."""
    from wise_edit.data import run_data

    run_dir = Path(run_dir)
    if (run_dir / "results.json").exists():
        payload = json.loads((run_dir / "results.json").read_text())
        found = run_data(payload, ds_size=ds_size)
        return found.dataset, found.probes, payload["config"]["run"].get("use_chat_template", False), True
    if (run_dir / ".hydra" / "config.yaml").exists():
        cfg, (dataset, _, probes) = saved_run_inputs(run_dir, ds_size)
        return dataset, probes, cfg.get("use_chat_template", False), False
    raise SystemExit(f"error: {run_dir} has neither results.json nor .hydra/config.yaml: not a CLI run's output_dir")


def run(cfg: DictConfig) -> dict:
    check_settings(cfg)
    output_dir = Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else _project_path(
        cfg.output_dir)
    from wise_edit.results import lock_output_dir

    with lock_output_dir(output_dir):
        return _run(cfg, output_dir)


def load_hparams(cfg: DictConfig) -> tuple[HyperParams, Path, Path | None]:
    """The method's hyperparameters, the file they come from and the benchmark's file applied on top of it.

    A file beside the hparams file named ``<its name>.<data name>.yaml`` (``hparams/WISE/smollm2-135m.temporal.yaml``)
    holds the keys chosen on that benchmark's own dev stream, so one multirun over the six methods runs each with
    its benchmark's settings; ``hparams.<key>=`` on the command line still wins.
    """
    from wise_edit import HyperParams

    hparams_file = _project_path(cfg.hparams_file or f"hparams/{cfg.alg_name}/{cfg.model}.yaml")
    hparams = HyperParams.from_hparams(hparams_file)
    stem = hparams_file.name.removesuffix(".yaml")
    benchmark_file: Path | None = hparams_file.with_name(f"{stem}.{cfg.data.name}.yaml")
    if benchmark_file.is_file():
        hparams = hparams.updated_from(benchmark_file)
    else:
        benchmark_file = None
    overrides = OmegaConf.to_container(cfg.hparams, resolve=True)
    if overrides:
        hparams = hparams.replace(**overrides)
    return hparams, hparams_file, benchmark_file


def _run(cfg: DictConfig, output_dir: Path) -> dict:
    from wise_edit import LifelongEditor
    from wise_edit.models import resolve_model_path
    from wise_edit.results import code_version, markdown_table, write_json_or_fallback

    start = time.perf_counter()
    version = code_version()  # the code that runs: a checkout changed during a long run must not be recorded
    hparams, hparams_file, benchmark_file = load_hparams(cfg)
    dataset, negatives, probes = run_inputs(cfg)
    relations, pairs = relation_inputs(cfg, dataset)
    sources = {"negatives": negatives.description} if negatives else {}
    same_form = negatives
    if same_form is None and cfg.data.get("same_form_path"):
        same_form = _same_form(cfg.data.name, cfg.data.same_form_path, cfg.data.same_form_records,
                               _project_path(cfg.data_path or cfg.data.path), dataset.requests, "calibration")
        sources["same_form"] = same_form.description
    if relations is not None:
        sources["rloc_probes"] = relations.description
    if pairs is not None:
        sources["same_subject_pairs"] = {"path": cfg.data.same_subject_path,
                                         "records": list(cfg.data.same_subject_records), "n": len(pairs)}
    editor = LifelongEditor.from_hparams(hparams)
    checkpoint = output_dir / "checkpoint" if cfg.checkpoint_every and cfg.sequential_edit else None
    run_out = editor.edit_requests(dataset.requests, sequential_edit=cfg.sequential_edit,
                                   rel_metric=dataset.format.rel_metric, rephrase_name=dataset.format.rephrase_name,
                                   eval_generation=cfg.eval_generation, progress=cfg.progress,
                                   checkpoint_dir=checkpoint, checkpoint_every=cfg.checkpoint_every,
                                   neighbourhood=(probes.prompts, probes.answers) if probes else None,
                                   same_form=same_form.prompts if same_form else (),
                                   use_chat_template=cfg.use_chat_template, same_subject=pairs or (),
                                   relation_probes=(relations.prompts, relations.answers) if relations else None)
    run_out["timing"]["wall_seconds"] = time.perf_counter() - start
    if cfg.save_edits and cfg.sequential_edit:
        editor.save(output_dir / "edits")
    payload = {
        "summary": run_out["summary"],
        "alg_name": hparams.alg_name,
        "sequential_edit": cfg.sequential_edit,
        "blocks": run_out["blocks"],
        "requests": run_out["requests"],
        **({"neighbourhood": run_out["neighbourhood"]} if "neighbourhood" in run_out else {}),
        **({"relation_probes": run_out["relation_probes"]} if "relation_probes" in run_out else {}),
        **({"gate": editor.method.extra_state()["gate_calibration"]}
           if "gate_calibration" in editor.method.extra_state() else {}),
        "config": {"run": OmegaConf.to_container(cfg, resolve=True), "hparams": hparams.to_dict(),
                   "hparams_file": str(hparams_file),
                   "benchmark_hparams_file": str(benchmark_file) if benchmark_file else None},
        "code_version": version,
        "model": {"name": hparams.model_name, "path": resolve_model_path(hparams.model_name)},
        "data": {**dataset.describe(), **sources, **({"nloc_probes": probes.description} if probes else {})},
        "timing": run_out["timing"],
    }
    path = write_json_or_fallback(output_dir / "results.json", payload)
    row = {"method": hparams.alg_name, "T": cfg.ds_size, **run_out["summary"]}
    print(markdown_table([row]))
    print(f"seconds/edit {run_out['timing']['seconds_per_edit']:.2f}  results: {path}")
    return payload


@hydra.main(config_path="../configs", config_name="run", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Run; a failure prints its one-line reason and exits with status 2 (``debug=true``: the traceback)."""
    try:
        run(cfg)
    except Exception as exc:
        if cfg.get("debug"):
            raise
        print(f"error: {reason(exc)}", file=sys.stderr)
        sys.exit(2)


def reason(exc: BaseException) -> str:
    """The message of one of the package's own errors; type and message (and a hint) of anything else."""
    from wise_edit.data import DataError
    from wise_edit.errors import EditStateError, NonFiniteError, RequestError, RunError
    from wise_edit.hparams import HyperParamsError
    from wise_edit.sites import SiteError
    from wise_edit.tokens import TokenizationError

    own = (DataError, EditStateError, NonFiniteError, RequestError, RunError, HyperParamsError, SiteError,
           TokenizationError, FileNotFoundError)
    if isinstance(exc, own):
        return str(exc)
    return f"{type(exc).__name__}: {exc} (rerun with debug=true for the traceback)"


def _allow_hparams_overrides(argv: list[str]) -> list[str]:
    """``hparams.<key>=v`` may name any key of the method's file, which the Hydra config cannot list: add-or-set."""
    return [f"++{a}" if a.startswith("hparams.") else a for a in argv]


if __name__ == "__main__":
    sys.argv = [sys.argv[0], *_allow_hparams_overrides(sys.argv[1:])]
    main()
