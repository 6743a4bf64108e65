import pytest
import torch

from wise_edit.sites import SiteError, hidden_of, resolve_site, run_through


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


def test_run_through_stops_at_the_layer_and_reads_what_a_full_pass_reads(model):
    site = resolve_site(model, "model.layers[1].mlp.down_proj.weight")
    ids = torch.tensor([[5, 9, 3, 7, 2]])
    ran, keys = [], []
    hooks = [layer.register_forward_hook(lambda m, a, o, i=i: ran.append(i))
             for i, layer in enumerate(model.model.layers)]
    hooks.append(site.linear.register_forward_hook(lambda m, a, o: keys.append(a[0])))
    with torch.no_grad():
        full = model(input_ids=ids, output_hidden_states=True)
        ran.clear()
        out = run_through(model, site.layer, input_ids=ids)
    for hook in hooks:
        hook.remove()
    assert ran == [0, 1]  # layers 2 and 3 never ran
    torch.testing.assert_close(keys[1], keys[0], rtol=0, atol=0)
    torch.testing.assert_close(hidden_of(out), full.hidden_states[2], rtol=0, atol=0)


def test_run_through_a_layer_outside_the_decoder_says_so(model):
    with pytest.raises(SiteError, match="never reached the layer Linear"):
        run_through(model, torch.nn.Linear(2, 2), input_ids=torch.tensor([[1, 2]]))
