import pytest

from wise_edit import HyperParams, HyperParamsError
from wise_edit.methods.ft_l import FTLHyperParams
from wise_edit.methods.wise import WISEHyperParams

from conftest import ROOT


def write(tmp_path, text):
    path = tmp_path / "hp.yaml"
    path.write_text(text)
    return path


GOOD = "alg_name: FT-L\nmodel_name: m\ninner_params: ['model.layers[1].mlp.down_proj.weight']\nedit_lr: 0.5\n"


def test_loads_typed_and_dispatches_on_alg_name(tmp_path):
    hp = HyperParams.from_hparams(write(tmp_path, GOOD))
    assert isinstance(hp, FTLHyperParams)
    assert hp.edit_lr == 0.5 and hp.n_iter == 25


def test_int_widens_to_float_and_easyedit_device(tmp_path):
    hp = FTLHyperParams.from_hparams(write(tmp_path, GOOD.replace("0.5", "1") + "device: 0\n"))
    assert hp.edit_lr == 1.0 and isinstance(hp.edit_lr, float) and hp.device == 0


def test_missing_file():
    with pytest.raises(HyperParamsError, match="not found: .*nope.yaml"):
        HyperParams.from_hparams("nope.yaml")


def test_unknown_key_names_it(tmp_path):
    with pytest.raises(HyperParamsError, match=r"hp.yaml: unknown key\(s\) \['edit_lrr'\]"):
        HyperParams.from_hparams(write(tmp_path, GOOD + "edit_lrr: 1.0\n"))


def test_missing_required_key(tmp_path):
    with pytest.raises(HyperParamsError, match=r"missing required key\(s\) \['inner_params'\]"):
        HyperParams.from_hparams(write(tmp_path, "alg_name: FT-L\nmodel_name: m\n"))


def test_wrong_type_names_key(tmp_path):
    with pytest.raises(HyperParamsError, match="key 'n_iter' expects int, got 'ten'"):
        HyperParams.from_hparams(write(tmp_path, GOOD + "n_iter: ten\n"))
    with pytest.raises(HyperParamsError, match=r"key 'inner_params'\[0\] expects str"):
        HyperParams.from_hparams(write(tmp_path, GOOD.replace("['model.layers[1].mlp.down_proj.weight']", "[3]")))


def test_alg_name_mismatch_and_unknown(tmp_path):
    with pytest.raises(HyperParamsError, match="alg_name is 'FT-L' but WISEHyperParams expects 'WISE'"):
        WISEHyperParams.from_hparams(write(tmp_path, GOOD))
    with pytest.raises(KeyError, match="unknown alg_name 'NOPE'"):
        HyperParams.from_hparams(write(tmp_path, GOOD.replace("FT-L", "NOPE")))


def test_load_hparams_picks_each_registered_class_by_its_alg_name(tmp_path):
    from wise_edit import get_method, load_hparams, registered_methods

    for alg in ("FT-L", "WISE"):
        loaded = load_hparams(write(tmp_path, GOOD.replace("FT-L", alg)))
        assert type(loaded) is get_method(alg).hparams_cls and loaded.alg_name == alg
    with pytest.raises(KeyError, match=r"unknown alg_name 'NOPE'; registered: \[.*'MEMOIR'"):
        load_hparams(write(tmp_path, GOOD.replace("FT-L", "NOPE")))
    assert set(registered_methods()) >= {"FT-L", "GRACE", "MEMIT", "MEMOIR", "ROME", "WISE"}


def test_cross_field_validation(tmp_path):
    text = GOOD.replace("FT-L", "WISE").replace("edit_lr: 0.5\n", "save_freq: 3\nmerge_freq: 4\n")
    with pytest.raises(HyperParamsError, match="'merge_freq' \\(4\\) must be a multiple of 'save_freq' \\(3\\)"):
        HyperParams.from_hparams(write(tmp_path, text))


@pytest.mark.parametrize("path", sorted((ROOT / "hparams").glob("*/*.yaml")), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_file_loads(path):
    """A model's file alone; a benchmark's file (``<model>.<data>.yaml``) on top of its model's file."""
    model, _, benchmark = path.name.removesuffix(".yaml").partition(".")
    if benchmark:
        assert (ROOT / "configs" / "data" / f"{benchmark}.yaml").is_file(), f"{path.name}: no benchmark {benchmark!r}"
        hp = HyperParams.from_hparams(path.with_name(f"{model}.yaml")).updated_from(path)
    else:
        hp = HyperParams.from_hparams(path)
    assert hp.alg_name == path.parent.name


@pytest.mark.parametrize("alg", ["WISE", "MEMOIR"])
def test_negative_protect_is_refused(tmp_path, alg):
    text = GOOD.replace("FT-L", alg) + "protect: -1\n"
    with pytest.raises(HyperParamsError, match="key 'protect' must be >= 0, got -1.0"):
        HyperParams.from_hparams(write(tmp_path, text))


@pytest.mark.parametrize("alg, sites", [("FT-L", 1), ("GRACE", 1), ("ROME", 1), ("MEMOIR", 1), ("WISE", 1),
                                        ("MEMIT", None)])
def test_each_method_declares_how_many_matrices_it_edits(alg, sites):
    from wise_edit import get_method

    cls = get_method(alg).hparams_cls
    assert cls.SITES == sites
    two = ["model.layers[1].mlp.down_proj.weight", "model.layers[2].mlp.down_proj.weight"]
    base = {"alg_name": alg, "model_name": "tiny"}
    if sites == 1:
        with pytest.raises(HyperParamsError, match=f"{alg} edits 1 matrix, inner_params has 2"):
            cls.from_dict({**base, "inner_params": two})
    else:
        assert cls.from_dict({**base, "inner_params": two}).inner_params == two
    with pytest.raises(HyperParamsError, match="lists a matrix twice"):
        cls.from_dict({**base, "inner_params": two[:1] * 2})
