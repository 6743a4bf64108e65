import pytest

from wise_edit.sites import SiteError, resolve_site


def test_resolves_linear_and_its_decoder_layer(model):
    site = resolve_site(model, "model.layers[2].mlp.down_proj.weight")
    assert site.linear is model.model.layers[2].mlp.down_proj
    assert site.layers is model.model.layers and site.layer_index == 2


@pytest.mark.parametrize("path,message", [
    ("model.layers[9].mlp.down_proj.weight", r"'model.layers' has no submodule '9' \(it has \['0..3'\]\)"),
    ("model.layers[1].mlp.down.weight", r"'model.layers.1.mlp' has no submodule 'down' \(it has \['gate_proj'"),
    ("model.layers[1].mlp.down_proj", "must name a weight"),
    ("model.layers[1].mlp.act_fn.weight", "is a SiLU"),
    ("model.norm.weight", "is a LlamaRMSNorm, not a torch.nn.Linear"),
])
def test_bad_inner_params_name_what_is_wrong(model, path, message):
    with pytest.raises(SiteError, match=message):
        resolve_site(model, path)
