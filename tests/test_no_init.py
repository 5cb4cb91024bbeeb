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
