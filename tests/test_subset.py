"""recipes/default/subset.py: the listed utterances of stage 2's data, at their listed right contexts."""

import importlib.util
import json
import subprocess
import sys

from conftest import RECIPE


def load_subset():
    spec = importlib.util.spec_from_file_location("subset", RECIPE / "subset.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def write(path, ids_rc):
    path.write_text("".join(json.dumps({"id": i, "text": "x", "right_context_ms": rc}) + "\n" for i, rc in ids_rc))


def test_keeps_listed_utterances_at_their_right_context(tmp_path):
    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    write(data / "train.jsonl", [("a", 480), ("b", 960), ("c", 720)])
    write(data / "train_synthetic.jsonl", [("s1", 960), ("s2", 480)])
    ids = tmp_path / "ids.tsv"
    ids.write_text("# id\trc\na\t480\nc\t720\ns1\t720\n")
    counts = load_subset().subset(data, load_subset().read_ids(ids), out)
    assert counts == {"train.jsonl": 2, "train_synthetic.jsonl": 1}
    got = [json.loads(x) for x in (out / "train_synthetic.jsonl").read_text().splitlines()]
    assert got == [{"id": "s1", "text": "x", "right_context_ms": 720}]
    assert [json.loads(x)["id"] for x in (out / "train.jsonl").read_text().splitlines()] == ["a", "c"]


def test_a_listed_utterance_missing_from_the_data_fails(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write(data / "train.jsonl", [("a", 480)])
    ids = tmp_path / "ids.tsv"
    ids.write_text("a\t480\nzz\t720\n")
    r = subprocess.run([sys.executable, str(RECIPE / "subset.py"), "--data", str(data), "--ids", str(ids),
                        "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert r.returncode == 1 and "1 listed utterances are not in" in r.stderr


def test_the_committed_list_holds_the_fine_tune_at_the_right_contexts_it_used():
    ids = load_subset().read_ids(RECIPE / "labels" / "finetune-2026-12-06.tsv")
    assert len(ids) > 2000 and set(ids.values()) <= {480, 720}
