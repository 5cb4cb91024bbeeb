"""Building without random initial weights: inside, the init functions leave tensors alone; after, they work."""

import pytest
import torch
from torch import nn

from reallm_cli.model.no_init import no_random_init


def test_init_functions_leave_tensors_alone_inside_and_work_again_after():
    t = torch.zeros(4, 4)
    with no_random_init():
        nn.init.normal_(t)
        nn.init.kaiming_uniform_(t, a=1.0)
        nn.init.ones_(t)
        assert torch.count_nonzero(t) == 0
    nn.init.normal_(t)
    assert torch.count_nonzero(t) == 16


def test_init_functions_come_back_after_an_error():
    with pytest.raises(RuntimeError), no_random_init():
        raise RuntimeError("boom")
    t = torch.zeros(3)
    nn.init.ones_(t)
    assert t.tolist() == [1.0, 1.0, 1.0]


def test_a_loaded_model_equals_its_file(tmp_path):
    from conftest import tiny_model
    from reallm_cli.model.checkpoint import load_model, save_model
    from reallm_cli.model.presets import placeholder_tokenizer

    tok = placeholder_tokenizer(64)
    model = tiny_model(tok.vocab_size)
    save_model(tmp_path / "m.safetensors", model, tok, dtype=torch.float32)
    loaded, _ = load_model(tmp_path / "m.safetensors")
    want = model.state_dict()
    for name, value in loaded.state_dict().items():
        assert torch.equal(value, want[name]), name
    assert loaded.decoder.output.weight is loaded.decoder.tok_embeddings.weight  # still tied


def test_a_tied_head_is_stored_once_and_a_file_that_holds_it_twice_still_loads(tmp_path):
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from conftest import tiny_model
    from reallm_cli.model.checkpoint import load_model, save_model
    from reallm_cli.model.presets import placeholder_tokenizer

    tok = placeholder_tokenizer(64)
    model = tiny_model(tok.vocab_size)
    save_model(tmp_path / "m.safetensors", model, tok, dtype=torch.float32)
    with safe_open(str(tmp_path / "m.safetensors"), "pt") as f:
        keys, meta = set(f.keys()), f.metadata()
    assert "decoder.tok_embeddings.weight" in keys and "decoder.output.weight" not in keys
    assert json.loads(meta["tied"]) == {"decoder.output.weight": "decoder.tok_embeddings.weight"}
    state = load_file(str(tmp_path / "m.safetensors"))  # as files were written before: both keys, no "tied"
    state["decoder.output.weight"] = state["decoder.tok_embeddings.weight"].clone()
    old = {k: v for k, v in meta.items() if k != "tied"}
    save_file(state, str(tmp_path / "old.safetensors"), metadata=old)
    for name in ("m", "old"):
        loaded, _ = load_model(tmp_path / f"{name}.safetensors")
        assert loaded.decoder.output.weight is loaded.decoder.tok_embeddings.weight
        assert torch.equal(loaded.decoder.output.weight, model.decoder.tok_embeddings.weight)
