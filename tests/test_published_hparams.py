"""Every hparams file that says "published" carries the values of upstream EasyEdit's file (commit 14cea82)."""

import re
import tarfile

import pytest
import yaml

from conftest import ROOT
from wise_edit import HyperParams

ARCHIVE = ROOT.parent / "shared" / "vendor" / "easyedit-14cea82.tar.gz"

# our file -> (upstream file, {our key: upstream key})
COMMON_WISE = {"edit_lr": "edit_lr", "n_iter": "n_iter", "act_margin": "act_margin", "act_ratio": "act_ratio",
               "mask_ratio": "mask_ratio", "norm_constraint": "norm_constraint", "save_freq": "save_freq",
               "merge_freq": "merge_freq", "densities": "densities", "retrieve": "retrieve"}
COMMON_ROME = {"edit_lr": "v_lr", "n_iter": "v_num_grad_steps", "kl_factor": "kl_factor",
               "v_weight_decay": "v_weight_decay", "clamp_norm_factor": "clamp_norm_factor",
               "mom2_adjustment": "mom2_adjustment"}
PUBLISHED = {
    "WISE/llama-7b.yaml": ("WISE/llama-7b.yaml", COMMON_WISE),
    "WISE/mistral-7b.yaml": ("WISE/mistral-7b.yaml", COMMON_WISE),
    "WISE/llama3-8b.yaml": ("WISE/llama3-8b.yaml", COMMON_WISE),
    "GRACE/llama-7b.yaml": ("GRACE/llama-7b.yaml", {"edit_lr": "edit_lr", "n_iter": "n_iter", "eps": "eps"}),
    "ROME/llama-7b.yaml": ("ROME/llama-7b.yaml", COMMON_ROME),
    "MEMIT/llama-7b.yaml": ("MEMIT/llama-7b.yaml", {**COMMON_ROME, "mom2_update_weight": "mom2_update_weight"}),
    "FT-L/llama-7b.yaml": ("FT/llama-7b.yaml", {"edit_lr": "lr", "n_iter": "num_steps"}),
}


def upstream(name: str) -> dict:
    with tarfile.open(ARCHIVE) as archive:
        member = next(m for m in archive.getmembers() if m.name.endswith(f"EasyEdit/hparams/{name}"))
        return yaml.safe_load(archive.extractfile(member).read())


def _layers(config: dict) -> list[int]:
    if "layers" in config:
        return list(config["layers"])
    return [int(re.search(r"layers\[(\d+)\]", p).group(1)) for p in config["inner_params"]]


@pytest.mark.skipif(not ARCHIVE.exists(), reason="the vendored upstream archive is not beside this checkout")
@pytest.mark.parametrize("ours", sorted(PUBLISHED))
def test_published_file_matches_upstream(ours):
    theirs_name, keys = PUBLISHED[ours]
    theirs = upstream(theirs_name)
    mine = HyperParams.from_hparams(ROOT / "hparams" / ours).to_dict()
    assert _layers(mine) == _layers(theirs)
    for key, their_key in keys.items():
        value = theirs.get(their_key, True if their_key == "mom2_adjustment" else None)
        assert value is not None, f"upstream {theirs_name} has no {their_key}"
        if isinstance(value, str):
            value = float(value)  # YAML reads 5e-1 as a string
        assert mine[key] == pytest.approx(value), f"{ours}: {key} is {mine[key]}, upstream {their_key} {value}"
