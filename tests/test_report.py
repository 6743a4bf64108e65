"""The comparison report rebuilt from result files: rows it must tell apart, and a perplexity column."""

import json

from wise_edit.report import collect, write_report


def _result(root, name, method, size, data="zsre", chat=False, **summary):
    path = root / name / "results.json"
    path.parent.mkdir(parents=True)
    payload = {"alg_name": method, "sequential_edit": True, "summary": summary, "timing": {"seconds_per_edit": 1.5},
               "config": {"run": {"ds_size": size, "data": {"name": data}, "use_chat_template": chat}},
               "blocks": [{"first": 0, "last": size - 1, **summary}]}
    path.write_text(json.dumps(payload))


def test_plain_and_chat_template_runs_of_one_method_stay_two_rows(tmp_path):
    for size in (1, 10):
        _result(tmp_path, f"plain{size}", "WISE", size, rel=0.9, gen=0.8, loc=1.0, gen_rel=0.1)
        _result(tmp_path, f"chat{size}", "WISE", size, chat=True, rel=0.7, gen=0.6, loc=1.0, gen_rel=0.5)
    markdown, plot = write_report(tmp_path)
    table = markdown.read_text()
    assert "| WISE | 10 | seq | zsre | plain | 0.900 | 0.800 | 1.000 |" in table
    assert "| WISE | 10 | seq | zsre | chat template | 0.700 | 0.600 | 1.000 |" in table
    assert "WISE (chat template) T=10" in table
    assert plot.stat().st_size > 10_000


def test_runs_of_one_prompt_form_have_no_prompts_column(tmp_path):
    _result(tmp_path, "a", "WISE", 10, rel=0.9, gen=0.8, loc=1.0)
    _result(tmp_path, "b", "GRACE", 10, rel=1.0, gen=0.2, loc=1.0)
    markdown, _ = write_report(tmp_path)
    assert markdown.read_text().splitlines()[0].startswith("| method | T | protocol | data | rel |")
    assert [r["prompts"] for r in collect(tmp_path)] == ["plain", "plain"]


def test_a_directory_of_links_to_runs_reports_them(tmp_path):
    _result(tmp_path / "runs", "a", "WISE", 10, rel=0.9, gen=0.8, loc=1.0)
    chosen = tmp_path / "chosen [T=10]"  # glob's metacharacters in the path are names, not patterns
    chosen.mkdir()
    (chosen / "a").symlink_to(tmp_path / "runs" / "a", target_is_directory=True)
    assert [(r["method"], r["T"]) for r in collect(chosen)] == [("WISE", 10)]


def test_hallucination_perplexity_is_tabled_and_plotted_without_an_average(tmp_path):
    for size, ppl in ((1, 1.2), (10, 35.0)):
        _result(tmp_path, f"w{size}", "WISE", size, data="hallucination", rel=0.95, ppl=ppl, loc=1.0)
    markdown, plot = write_report(tmp_path)
    lines = markdown.read_text().splitlines()
    assert lines[0] == "| method | T | protocol | data | rel | loc | ppl |"
    assert "| WISE | 10 | seq | hallucination | 0.950 | 1.000 | 35.000 |" in lines
    assert plot.stat().st_size > 10_000


def test_three_benchmarks_read_across_at_each_ones_largest_T(tmp_path):
    _result(tmp_path, "z10", "WISE", 10, rel=0.5, gen=0.5, loc=1.0)
    _result(tmp_path, "z100", "WISE", 100, rel=0.9, gen=0.8, loc=1.0, port=0.3)
    _result(tmp_path, "g100", "GRACE", 100, rel=1.0, gen=0.2, loc=1.0, port=0.1)
    _result(tmp_path, "t75", "WISE", 75, data="temporal", rel=0.88, ood=0.6, loc=1.0)
    _result(tmp_path, "h100", "WISE", 100, data="hallucination", rel=0.9, ppl=1.5, loc=0.99)
    _result(tmp_path, "h100c", "WISE", 100, data="hallucination", chat=True, rel=0.1, ppl=99.0, loc=0.5)
    text = (write_report(tmp_path)[0]).read_text()
    assert ("| method | hallucination T=100 rel | hallucination T=100 ppl | hallucination T=100 loc "
            "| temporal T=75 rel | temporal T=75 ood | temporal T=75 loc "
            "| zsre T=100 rel | zsre T=100 gen | zsre T=100 loc | zsre T=100 port |") in text
    assert "| GRACE |  |  |  |  |  |  | 1.000 | 0.200 | 1.000 | 0.100 |" in text
    assert "| WISE | 0.900 | 1.500 | 0.990 | 0.880 | 0.600 | 1.000 | 0.900 | 0.800 | 1.000 | 0.300 |" in text
