"""The CLI contract on a tiny saved model: results.json fields and means that match the per-request values."""

import importlib.util
import json
import statistics
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from conftest import DATA, ROOT, byte_tokenizer, tiny_llama

spec = importlib.util.spec_from_file_location("run_lifelong_editing", ROOT / "scripts" / "run_lifelong_editing.py")
cli = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cli)


@pytest.fixture
def tiny_dir(tmp_path):
    path = tmp_path / "tiny-model"
    tiny_llama().save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    hp = tmp_path / "ftl.yaml"
    hp.write_text(f"alg_name: FT-L\nmodel_name: {path}\ninner_params: ['model.layers[2].mlp.down_proj.weight']\n"
                  "edit_lr: 0.05\nn_iter: 10\n")
    return hp


def test_results_json_records_everything_and_means_match(tiny_dir, tmp_path, capsys):
    out = tmp_path / "run"
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("run", overrides=["alg_name=FT-L", "data=zsre", "ds_size=3", f"hparams_file={tiny_dir}",
                                        "++hparams.n_iter=5", f"output_dir={out}", "progress=false",
                                        f"data_root={DATA}"])
    cli.run(cfg)
    result = json.loads((out / "results.json").read_text())
    assert result["config"]["hparams"]["n_iter"] == 5  # the override reached the method
    assert result["data"]["ds_size"] == 3 and result["data"]["sha256"].startswith("0cf155da")
    assert {"package", "torch", "transformers"} <= set(result["code_version"])
    assert result["timing"]["seconds_per_edit"] > 0 and result["model"]["name"] == str(tiny_dir.parent / "tiny-model")
    for name, key in [("rel", "rewrite_acc"), ("gen", "rephrase_acc"), ("loc", "locality"),
                      ("gen_em", "generate_exact_match")]:
        assert result["summary"][name] == pytest.approx(statistics.fmean(r[key] for r in result["requests"]))
    assert result["data"]["negatives"]["records"] == [0, 500]  # same-form negatives: train records 0-499 only
    # neighbourhood locality: the 100 reserved probes of the train file, recorded with the data
    probes = result["data"]["nloc_probes"]
    assert probes["records"] == [500, 600] and probes["n"] == 100 and probes["fields"] == ["src", "answers"]
    assert probes["path"].endswith("zsre_mend_train_1k.json") and len(result["neighbourhood"]) == 100
    assert result["neighbourhood"][0]["prompt"] == "Where did Olav Gurvin study or work?"
    assert result["neighbourhood"][0]["answer"] == "University of Oslo"
    assert result["summary"]["nloc"] == pytest.approx(statistics.fmean(p["nloc"] for p in result["neighbourhood"]))
    table = capsys.readouterr().out
    assert "| FT-L | 3 |" in table and "nloc" in table


def test_a_counterfact_run_scores_same_subject_locality_and_records_its_gate(tiny_dir, tmp_path):
    """data=counterfact with the same-subject stream: every edit has probes asking another relation of its
    subject, scored like Loc (summary.rloc); a gated method records its calibrated radii; subjects=false
    removes the subjects before editing."""
    hp = tmp_path / "memoir.yaml"
    hp.write_text(f"alg_name: MEMOIR\nmodel_name: {tiny_dir.parent / 'tiny-model'}\n"
                  "inner_params: ['model.layers[2].mlp.down_proj.weight']\nn_prefixes: 2\nprefix_length: 4\n"
                  "n_iter: 3\ntop_k: 32\nirr_threshold: 0.6\ngate_params: model.layers[0].mlp.down_proj.weight\n")
    out = tmp_path / "run"
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("run", overrides=["alg_name=MEMOIR", "data=counterfact", "data.stream=same_subject", "ds_size=3",
                                        f"hparams_file={hp}", f"output_dir={out}", "progress=false",
                                        "eval_generation=false", "subjects=false", f"data_root={DATA}"])
    cli.run(cfg)
    result = json.loads((out / "results.json").read_text())
    probes = result["relation_probes"]
    assert result["data"]["records"][:3] == result["data"]["records"] and len(result["data"]["records"]) == 3
    assert result["data"]["rloc_probes"]["n"] == len(probes) >= 3 and probes[0]["prompt"] == "Jack Wong Sue expired at"
    assert result["summary"]["rloc"] == pytest.approx(statistics.fmean(p["rloc"] for p in probes))
    assert "nloc" not in result["summary"] and result["data"]["same_subject_pairs"]["n"] == 33
    assert result["data"]["subjects"] is False
    gate = result["gate"]
    # the pool: half of the 493 distinct prompts of val records 0-499
    assert gate["n_same_subject"] == 33 and gate["n_pool"] == 246 and gate["relation_radius"] is not None


def test_a_knowedit_file_reports_each_locality_and_portability_kind_by_name(tiny_dir, tmp_path, capsys):
    out = tmp_path / "run"
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("run", overrides=["alg_name=FT-L", "data=knowedit", "ds_size=3", f"hparams_file={tiny_dir}",
                                        f"output_dir={out}", "progress=false", "eval_generation=false",
                                        f"data_root={DATA}"])
    cli.run(cfg)
    result = json.loads((out / "results.json").read_text())
    summary = result["summary"]
    kinds = ("Relation_Specificity", "Forgetfulness", "Reasoning", "Subject_Aliasing", "Logical_Generalization")
    for kind in kinds:
        values = [r["probes"][kind] for r in result["requests"] if kind in r["probes"]]
        assert values and summary[kind] == pytest.approx(statistics.fmean(values))
    assert summary["loc"] == pytest.approx(statistics.fmean(r["locality"] for r in result["requests"]))
    assert result["data"]["name"] == "knowedit" and result["data"]["path"].endswith("knowedit_sample.json")
    header = capsys.readouterr().out.splitlines()[0]
    assert all(kind in header for kind in kinds) and "| port |" in header


def test_a_benchmark_file_beside_the_hparams_file_applies_to_that_benchmark_only(tiny_dir):
    """``<file>.<data>.yaml`` (the keys a benchmark's dev stream chose) sits between the file and the command line."""
    (tiny_dir.parent / "ftl.temporal.yaml").write_text("n_iter: 70\nedit_lr: 0.01\n")

    def loaded(data, *extra):
        with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
            cfg = compose("run", overrides=["alg_name=FT-L", f"data={data}", f"hparams_file={tiny_dir}", *extra])
        return cli.load_hparams(cfg)

    hparams, _, benchmark = loaded("temporal")
    assert (hparams.n_iter, hparams.edit_lr, benchmark.name) == (70, 0.01, "ftl.temporal.yaml")
    hparams, _, benchmark = loaded("zsre")
    assert (hparams.n_iter, hparams.edit_lr, benchmark) == (10, 0.05, None)
    assert loaded("temporal", "++hparams.n_iter=3")[0].n_iter == 3  # the command line still wins
    (tiny_dir.parent / "ftl.temporal.yaml").write_text("n_iters: 70\n")
    with pytest.raises(ValueError, match=r"ftl\.temporal\.yaml: unknown key\(s\) \['n_iters'\]"):
        loaded("temporal")


@pytest.mark.parametrize("chat", [False, True])
def test_a_saved_state_scores_as_its_run_did(tiny_dir, tmp_path, chat):
    """scripts/score_saved.py on a run's final state gives the run's own figures (so a checkpoint at k edits
    gives what a T=k run would), in the chat template too if the run used it."""
    import subprocess
    import sys

    if chat:
        tok = byte_tokenizer()
        tok.chat_template = "{% for m in messages %}<u>{{ m['content'] }}{% endfor %}<a>"
        tok.save_pretrained(tiny_dir.parent / "tiny-model")
    out = tmp_path / "run"
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("run", overrides=["alg_name=FT-L", "data=zsre", "ds_size=3", f"hparams_file={tiny_dir}",
                                        f"output_dir={out}", "progress=false", "eval_generation=false",
                                        f"data_root={DATA}", "checkpoint_every=2", f"use_chat_template={chat}"])
    cli.run(cfg)
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "score_saved.py"), str(out)], capture_output=True,
                          text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    run = json.loads((out / "results.json").read_text())
    scored = json.loads((out / "score_edits_T3.json").read_text())
    assert scored["edits"] == 3
    for name in ("rel", "gen", "loc", "nloc"):
        assert scored["summary"][name] == pytest.approx(run["summary"][name]), name
    assert scored["blocks"] == run["blocks"]
    assert [r["prompt"] for r in scored["requests"]] == [r["prompt"] for r in run["requests"]]
    # a run that has not finished has no results.json: the configuration the CLI saved at its start serves
    from omegaconf import OmegaConf

    (out / "results.json").unlink()
    (out / "score_edits_T3.json").unlink()
    (out / ".hydra").mkdir()
    OmegaConf.save(cfg, out / ".hydra" / "config.yaml")
    again = subprocess.run([sys.executable, str(ROOT / "scripts" / "score_saved.py"), str(out), "--state",
                            "checkpoint"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    unfinished = json.loads((out / "score_checkpoint_T3.json").read_text())
    assert unfinished["summary"] == scored["summary"] and unfinished["data_hashes_checked"] is False


def test_score_saved_overrides_parse_values_and_refuse_unknown_keys(monkeypatch):
    """``score_saved.py --set``: a typo must not score the unchanged state under another name."""
    import sys

    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    monkeypatch.setitem(sys.modules, "run_lifelong_editing", cli)
    spec = importlib.util.spec_from_file_location("score_saved", ROOT / "scripts" / "score_saved.py")
    score_saved = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(score_saved)
    hparams = {"irr_threshold": 0.5, "subject_radius": 0.5}
    assert score_saved.parse_overrides(["irr_threshold=0.4", "subject_radius=null"], hparams) == {
        "irr_threshold": 0.4, "subject_radius": None}
    with pytest.raises(SystemExit, match="no key 'irr_treshold'"):
        score_saved.parse_overrides(["irr_treshold=0.4"], hparams)
    with pytest.raises(SystemExit, match="expected KEY=VALUE"):
        score_saved.parse_overrides(["irr_threshold"], hparams)


def test_hparams_overrides_become_add_or_set():
    assert cli._allow_hparams_overrides(["alg_name=WISE", "hparams.edit_lr=0.5"]) == [
        "alg_name=WISE", "++hparams.edit_lr=0.5"]


def test_multirun_writes_a_comparison_that_the_result_files_alone_regenerate(tiny_dir, tmp_path):
    import subprocess
    import sys

    grace = tmp_path / "GRACE.yaml"
    grace.write_text(tiny_dir.read_text().replace("alg_name: FT-L", "alg_name: GRACE").replace("edit_lr: 0.05",
                                                                                                "edit_lr: 0.5"))
    tiny_dir.rename(tmp_path / "FT-L.yaml")
    out = tmp_path / "compare"
    cmd = [sys.executable, str(ROOT / "scripts" / "run_lifelong_editing.py"), "-m", "alg_name=FT-L,GRACE",
           "ds_size=2,3", f"hparams_file={tmp_path}/${{alg_name}}.yaml", "++hparams.n_iter=3",
           f"output_dir={out}", "progress=false", "eval_generation=false", f"data_root={DATA}"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(list(out.rglob("results.json"))) == 4
    table = (out / "comparison.md").read_text()
    for method in ("FT-L", "GRACE"):
        for t in (2, 3):
            assert f"| {method} | {t} | seq | zsre |" in table
    assert (out / "comparison.png").stat().st_size > 10_000
    assert (out / "retention.png").stat().st_size > 10_000
    import json

    result = json.loads(next(out.rglob("*T3*/results.json")).read_text())
    blocks = result["blocks"]  # 3 edits: one block per edit, in stream order
    assert [(b["first"], b["last"]) for b in blocks] == [(0, 0), (1, 1), (2, 2)]
    assert [b["rel"] for b in blocks] == [r["rewrite_acc"] for r in result["requests"]]
    (out / "comparison.md").unlink()
    again = subprocess.run([sys.executable, "-m", "wise_edit.report", str(out)], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert (out / "comparison.md").read_text() == table
    # runs at one T only: bars per metric instead of lines of one point each
    for path in out.rglob("*T2*/results.json"):
        path.unlink()
    single = subprocess.run([sys.executable, "-m", "wise_edit.report", str(out)], capture_output=True, text=True)
    assert single.returncode == 0, single.stderr
    assert "| FT-L | 3 | seq | zsre |" in (out / "comparison.md").read_text()
    assert "| FT-L | 2 |" not in (out / "comparison.md").read_text()
    assert (out / "comparison.png").stat().st_size > 10_000


def _gated_run(tiny_dir, tmp_path, alg_name: str, hparams: str) -> tuple[Path, dict]:
    """A 3-edit CLI run of the tiny model at layer 2, its fact gate at layer 0 with radius -1 (every row
    agrees); ``hparams``: the method's other keys (YAML lines)."""
    model = tiny_dir.parent / "tiny-model"
    hp = tmp_path / f"{alg_name}.yaml"
    hp.write_text(f"alg_name: {alg_name}\nmodel_name: {model}\ninner_params: ['model.layers[2].mlp.down_proj.weight']\n"
                  "n_prefixes: 2\nprefix_length: 4\nstop_loss: 0.0\n"
                  "gate_params: model.layers[0].mlp.down_proj.weight\nfact_radius: -1.0\n" + hparams)
    out = tmp_path / "run"
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("run", overrides=[f"alg_name={alg_name}", "data=zsre", "ds_size=3", f"hparams_file={hp}",
                                        f"output_dir={out}", "progress=false", "eval_generation=false",
                                        "nloc=false", f"data_root={DATA}"])
    cli.run(cfg)
    return out, json.loads((out / "results.json").read_text())


def _wise_run(tiny_dir, tmp_path, extra: str = "") -> tuple[Path, dict]:
    """A 3-edit WISE CLI run of the tiny model with the fact gate at radius -1 (every row agrees)."""
    return _gated_run(tiny_dir, tmp_path, "WISE", "edit_lr: 0.1\noptimizer: adam\nn_iter: 20\n"
                      "act_margin: [0.5, 3.0, 2.0]\nact_ratio: 0.8\nmerge_alg: sum\n" + extra)


def _diagnose_routing(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    spec = importlib.util.spec_from_file_location("diagnose_routing", ROOT / "scripts" / "diagnose_routing.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_diagnose_routing_bypasses_the_fact_gate_when_it_forces_the_memory(tiny_dir, tmp_path, monkeypatch):
    """scripts/diagnose_routing.py tells a lost edit from a gated one: with a gate radius no query can reach,
    nothing is routed and Rel is the unedited model's, while forcing the memory (router and gate bypassed)
    shows what the side memory holds, and turning the gates off gives the run's own Rel back."""
    import subprocess
    import sys

    out, run = _wise_run(tiny_dir, tmp_path)
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "diagnose_routing.py"), str(out), "--blocks", "0:3"],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    row = json.loads((out / "diagnose_edits_T3.json").read_text())["rows"][0]
    assert row["routed"] == 1.0 and row["own_memory"] == 1.0 and row["rel"] == pytest.approx(run["summary"]["rel"])

    diagnose_routing = _diagnose_routing(monkeypatch)
    editor = diagnose_routing.LifelongEditor.from_saved(out / "edits")
    editor.method.gate.radius = 2.0  # a cosine never reaches it: the gate now refuses every row
    requests = run["requests"]
    gated = diagnose_routing.diagnose(editor, [r["prompt"] for r in requests], [r["target_new"] for r in requests],
                                   [0, 0, 0])
    assert gated["routed"] == 0.0 and gated["own_memory"] == 0.0
    assert gated["rel"] < run["summary"]["rel"] - 0.2
    assert gated["rel_memory_forced"] > gated["rel"] + 0.2
    assert gated["rel_no_gate"] == pytest.approx(run["summary"]["rel"])


def test_diagnose_routing_forces_each_edit_onto_its_own_memory_in_retrieve_mode(tiny_dir, tmp_path, monkeypatch):
    """WISE-Retrieve with a memory per edit: each edit is filed under, routed to and forced onto its own memory
    (forcing the newest memory on every edit would score the first two against the third's memory)."""
    out, run = _wise_run(tiny_dir, tmp_path, "retrieve: true\nsave_freq: 1\nmerge_freq: 1\n")
    diagnose_routing = _diagnose_routing(monkeypatch)
    editor = diagnose_routing.LifelongEditor.from_saved(out / "edits")
    own = diagnose_routing.owners(editor, range(3))
    assert own == [0, 1, 2]
    requests = run["requests"]
    row = diagnose_routing.diagnose(editor, [r["prompt"] for r in requests], [r["target_new"] for r in requests], own)
    assert row["own_memory"] == 1.0 and row["rel"] == pytest.approx(run["summary"]["rel"])
    assert row["rel_memory_forced"] == pytest.approx(row["rel"])
    newest = diagnose_routing.diagnose(editor, [r["prompt"] for r in requests], [r["target_new"] for r in requests],
                                    [2, 2, 2])
    assert newest["rel_memory_forced"] < row["rel"] - 0.2


def test_diagnose_routing_tells_a_mask_threshold_miss_from_a_lost_memory_in_memoir(tiny_dir, tmp_path,
                                                                                  monkeypatch):
    """MEMOIR: each edit is held by its own stored mask; with an overlap threshold no mask reaches, nothing is
    routed, the gates off do not bring the edits back (the threshold refused them, not the gate), and forcing each
    edit's own mask does; forcing another edit's mask does not."""
    import subprocess
    import sys

    out, run = _gated_run(tiny_dir, tmp_path, "MEMOIR", "edit_lr: 5.0\nn_iter: 10\ntop_k: 32\nirr_threshold: 0.6\n")
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "diagnose_routing.py"), str(out), "--blocks", "0:3",
                           "--texts", "rephrase"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    row = json.loads((out / "diagnose_edits_T3_rephrase.json").read_text())["rows"][0]
    assert row["gen"] == pytest.approx(run["summary"]["gen"])

    diagnose_routing = _diagnose_routing(monkeypatch)
    editor = diagnose_routing.LifelongEditor.from_saved(out / "edits")
    own = diagnose_routing.owners(editor, range(3))
    assert own == [0, 1, 2]
    prompts, targets = [r["prompt"] for r in run["requests"]], [r["target_new"] for r in run["requests"]]
    home = diagnose_routing.diagnose(editor, prompts, targets, own)
    assert home["own_memory"] == 1.0 and home["rel"] == pytest.approx(run["summary"]["rel"])
    assert home["rel"] > 0.5
    editor.method.memory.irr_threshold = 2.0  # an overlap no mask reaches: the memory never fires
    missed = diagnose_routing.diagnose(editor, prompts, targets, own)
    assert missed["routed"] == 0.0 and missed["rel"] < home["rel"] - 0.2
    assert missed["rel_no_gate"] == pytest.approx(missed["rel"])
    assert missed["rel_memory_forced"] == pytest.approx(home["rel"])
    swapped = diagnose_routing.diagnose(editor, prompts, targets, [1, 2, 0])
    assert swapped["rel_memory_forced"] < home["rel"] - 0.2


def test_sweep_gate_scores_saved_edits_at_each_fact_radius(tiny_dir, tmp_path):
    """scripts/sweep_gate.py: at a radius no row reaches the unedited model answers (Rel falls), with the gate
    off the run's own figures come back, and the table is written."""
    import subprocess
    import sys

    out, run = _wise_run(tiny_dir, tmp_path)
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "sweep_gate.py"), str(out), "--gate", "fact",
                           "--radii", "none", "2.0"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads((out / "fact_radius_sweep.json").read_text())["rows"]
    assert [r["radius"] for r in rows] == ["none", "2.0"]
    assert rows[0]["rel"] == pytest.approx(run["summary"]["rel"])
    assert rows[1]["rel"] < rows[0]["rel"] - 0.2 and rows[1]["loc"] == 1.0


def test_tune_recipe_writes_the_best_feasible_trial_with_its_provenance(tiny_dir, tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("tune_recipe", ROOT / "scripts" / "tune_recipe.py")
    tune = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tune)
    space = tmp_path / "space.yaml"
    space.write_text("layer: {low: 0.3, high: 1.0}\nedit_lr: {low: 0.01, high: 0.1, log: true}\n")
    model = str(tiny_dir.parent / "tiny-model")
    written = tmp_path / "tuned.yaml"
    common = ["--alg", "FT-L", "--model", model, "--base", str(tiny_dir), "--space", str(space), "--edits", "2"]
    monkeypatch.setenv("WISE_EDIT_DATA", str(DATA))
    monkeypatch.setattr("sys.argv", ["tune_recipe.py", *common, "--trials", "3", "--min", "0", "0", "0",
                                     "--out", str(tmp_path / "study"), "--write", str(written)])
    tune.main()
    from wise_edit import HyperParams

    tuned = HyperParams.from_hparams(written)  # a valid hparams file
    report = json.loads((tmp_path / "study" / "tuning.json").read_text())
    assert report["trials"] == 3 and report["best"][0].startswith("* trial")
    best = json.loads(report["best"][0].split(": ", 1)[1].split(" -> ")[0])
    assert tuned.edit_lr == pytest.approx(best["edit_lr"]) and tuned.inner_params == [
        f"model.layers[{best['layer']}].mlp.down_proj.weight"]
    header = written.read_text().split("alg_name:")[0]
    assert "ZsRE train records 0-1 as edits" in header and "Budget: 3 trials" in header
    # constraints no trial meets: nothing is written
    monkeypatch.setattr("sys.argv", ["tune_recipe.py", *common, "--trials", "1", "--min", "1.1", "0", "0",
                                     "--out", str(tmp_path / "study2"), "--write", str(tmp_path / "none.yaml")])
    tune.main()
    assert not (tmp_path / "none.yaml").exists()
