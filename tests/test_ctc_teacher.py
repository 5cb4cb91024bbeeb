"""The CTC teacher's file: its typed config and weights round-trip, and a config that does not fit is refused."""

from __future__ import annotations

import json

import pytest
import torch

from reallm_cli.errors import ModelError
from reallm_cli.model.presets import placeholder_tokenizer, preset_config
from reallm_cli.train.ctc_teacher import CTCTeacher, TeacherConfig, load_teacher, save_teacher


def test_a_teacher_file_round_trips_and_a_bad_config_is_refused(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    tok = placeholder_tokenizer(32)
    torch.manual_seed(0)
    teacher = CTCTeacher(TeacherConfig(encoder=preset_config("tiny").encoder, vocab_size=tok.vocab_size, head_hidden=16))
    path = tmp_path / "t.safetensors"
    save_teacher(path, teacher, tok)
    loaded, _ = load_teacher(path)
    assert loaded.config == teacher.config
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), teacher.state_dict().values()))
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    config = json.loads(meta["config"])
    config["encoder_kind"] = "whisper"  # a Conformer's keys under the Whisper tag
    save_file(load_file(str(path)), str(tmp_path / "bad.safetensors"), metadata=dict(meta, config=json.dumps(config)))
    with pytest.raises(ModelError, match="whisper encoder config: unknown key"):
        load_teacher(tmp_path / "bad.safetensors")
